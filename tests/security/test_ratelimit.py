"""Credential endpoints are rate limited per client address; other routes are not."""

from __future__ import annotations

from fastapi.testclient import TestClient

from careplane.security.ratelimit import LIMITS, Limit, TokenBuckets


def test_token_bucket_refills() -> None:
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    limit = Limit("t", burst=3, per_minute=60)
    assert [buckets.take(limit, "a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take(limit, "a") == 1.0
    assert buckets.take(limit, "b") == 0  # another address has its own bucket
    now[0] += 1.0
    assert buckets.take(limit, "a") == 0
    assert buckets.take(limit, "a") > 0


def test_login_api_answers_429_after_the_burst(client: TestClient) -> None:
    burst = LIMITS[("POST", "/api/auth/token")].burst
    codes = []
    while 429 not in codes and len(codes) < burst + 20:  # slow hashing refills a little
        codes.append(client.post("/api/auth/token", json={"username": "x", "password": "y"})
                     .status_code)
    assert codes[:burst] == [401] * burst and codes[-1] == 429
    last = client.post("/api/auth/token", json={"username": "x", "password": "y"})
    assert last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["x-request-id"] and last.headers["x-content-type-options"] == "nosniff"
    assert "too many requests" in last.json()["error"]["message"]
    # The web login shares the same budget; unrelated routes are untouched.
    assert client.post("/login", data={}).status_code == 429
    assert client.get("/healthz").status_code == 200


def test_token_endpoint_answers_with_an_oauth_error(client: TestClient) -> None:
    burst = LIMITS[("POST", "/oauth2/token")].burst
    for _ in range(burst * 3):  # the bucket refills while the requests are served
        response = client.post("/oauth2/token", data={"grant_type": "client_credentials"})
        if response.status_code == 429:
            break
    assert response.status_code == 429
    assert response.json()["error"] == "slow_down"
