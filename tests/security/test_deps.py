"""Web sessions: the cookie authenticates, and a state-changing request must prove CSRF."""

from __future__ import annotations

from fastapi.testclient import TestClient

from careplane.security import Role
from careplane.security.deps import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import Accounts


def _sign_in(client: TestClient, username: str, password: str) -> str:
    page = client.get("/login")
    csrf = page.cookies.get(CSRF_COOKIE) or client.cookies.get(CSRF_COOKIE)
    assert csrf
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf": csrf, "next": "/"},
                           follow_redirects=False)
    assert response.status_code == 303
    assert client.cookies.get(SESSION_COOKIE)
    csrf_after = client.cookies.get(CSRF_COOKIE)
    assert csrf_after
    return csrf_after


def test_session_cookie_authenticates_reads(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    _sign_in(client, "nurse", nurse.password)
    assert client.get("/api/auth/me").json()["username"] == "nurse"


def test_state_change_without_csrf_header_is_refused(client: TestClient,
                                                      accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    csrf = _sign_in(client, "nurse", nurse.password)
    refused = client.post("/api/auth/revoke")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    wrong = client.post("/api/auth/revoke", headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    # The session survived both attempts; with the right header the request goes through.
    assert client.get("/api/auth/me").status_code == 200
    assert client.post("/api/auth/revoke", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/auth/me").status_code == 401


def test_login_form_without_csrf_is_refused(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    client.get("/login")
    response = client.post("/login", data={"username": "nurse", "password": nurse.password,
                                           "csrf": "forged", "next": "/"},
                           follow_redirects=False)
    assert response.status_code == 403
    assert not client.cookies.get(SESSION_COOKIE)


def test_login_next_cannot_leave_the_site(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        client.cookies.clear()
        client.get("/login")
        csrf = client.cookies.get(CSRF_COOKIE)
        response = client.post("/login", data={"username": "nurse", "password": nurse.password,
                                               "csrf": csrf, "next": target},
                               follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/"
