from __future__ import annotations

import logging

import orjson
import pytest
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.platform.db import DatabaseUnavailable
from careplane.settings import Settings
from tests.conftest import Accounts


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_readiness_reports_a_database_outage(client: TestClient,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    platform = client.app.state.platform  # type: ignore[attr-defined]

    def down() -> None:
        raise DatabaseUnavailable("cannot reach the database")

    monkeypatch.setattr(platform.db, "ping", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/api/openapi.json").json()
    assert "/api/jobs" in doc["paths"]
    assert "/api/auth/token" in doc["paths"]


def test_request_id_is_returned_and_kept(client: TestClient) -> None:
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
        "x-request-id"] == "abc-123"


def test_security_headers(client: TestClient) -> None:
    headers = client.get("/login").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_unauthenticated_api_is_refused_with_json(client: TestClient) -> None:
    response = client.get("/api/jobs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["error"]["status"] == 401
    assert body["request_id"] == response.headers["x-request-id"]


def test_wrong_token_is_refused(client: TestClient) -> None:
    for header in ("Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer "):
        response = client.get("/api/jobs", headers={"Authorization": header})
        assert response.status_code == 401, header


def test_malformed_json_is_a_4xx(client: TestClient) -> None:
    response = client.post("/api/auth/token", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "the request is not valid"


def test_unexpected_error_has_no_stack_trace(settings: Settings,
                                             caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings)

    @app.get("/api/boom")
    def boom() -> None:
        raise ValueError("secret internals: /srv/careplane/db.py line 42")

    with TestClient(app, raise_server_exceptions=False) as client, \
            caplog.at_level(logging.ERROR):
        response = client.get("/api/boom")
    assert response.status_code == 500
    text = response.text
    assert "secret internals" not in text and "Traceback" not in text
    assert response.json()["error"]["message"].startswith("internal error")
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


def test_token_flow_and_me(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("mina")
    response = client.post("/api/auth/token",
                           json={"username": "mina", "password": nurse.password})
    assert response.status_code == 200
    token = response.json()["access_token"]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["username"] == "mina"
    assert me["roles"] == ["clinician"]
    assert client.post("/api/auth/token", json={"username": "mina", "password": "wrong"}
                       ).status_code == 401
    assert client.post("/api/auth/revoke",
                       headers={"Authorization": f"Bearer {token}"}).status_code == 204
    assert client.get("/api/auth/me",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_json_log_lines_carry_the_request_id(settings: Settings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from careplane.platform.logs import JsonFormatter, request_id_var

    record = logging.LogRecord("careplane.http", logging.INFO, __file__, 1, "GET %s", ("/x",),
                               None)
    token = request_id_var.set("rid-1")
    try:
        line = orjson.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "GET /x"
    assert line["request_id"] == "rid-1"
    assert line["level"] == "info"
