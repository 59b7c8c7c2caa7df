from __future__ import annotations

import re

from fastapi.testclient import TestClient

from careplane.platform.db import Database
from careplane.platform.jobs import submit
from tests.conftest import Accounts


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the form carries a CSRF token"
    return match.group(1)


def _login(client: TestClient, username: str, password: str, next_: str = "/") -> str:
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf": _csrf(page.text), "next": next_},
                       follow_redirects=False).headers.get("location", "")


def test_dashboard_requires_login(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/"


def test_login_shows_dashboard_then_logout(client: TestClient, accounts: Accounts) -> None:
    accounts.make("mina")
    assert _login(client, "mina", "mina-password") == "/"
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert "Dashboard" in dashboard.text and 'href="/jobs"' in dashboard.text
    logout = client.post("/logout", data={"csrf": _csrf(dashboard.text)},
                         follow_redirects=False)
    assert logout.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_wrong_password_is_refused_politely(client: TestClient, accounts: Accounts) -> None:
    accounts.make("mina")
    page = client.get("/login")
    response = client.post("/login", data={"username": "mina", "password": "nope",
                                           "csrf": _csrf(page.text)})
    assert response.status_code == 401
    assert "Wrong username, password or code." in response.text
    assert "careplane_session" not in response.cookies


def test_login_without_csrf_token_is_refused(client: TestClient, accounts: Accounts) -> None:
    accounts.make("mina")
    client.get("/login")
    response = client.post("/login", data={"username": "mina", "password": "mina-password",
                                           "csrf": "forged"})
    assert response.status_code == 403
    assert "careplane_session" not in response.cookies


def test_open_redirect_is_not_followed(client: TestClient, accounts: Accounts) -> None:
    accounts.make("mina")
    assert _login(client, "mina", "mina-password", next_="//evil.example/") == "/"


def test_cookie_session_needs_csrf_header_for_api_writes(client: TestClient, db: Database,
                                                          accounts: Accounts) -> None:
    nurse = accounts.make("mina")
    with db.session() as session:
        job = submit(session, "tests.platform.job_tasks:add", {"a": 1, "b": 1},
                     org_id=nurse.org_id).id
    _login(client, "mina", "mina-password")
    assert client.post(f"/api/jobs/{job}/cancel").status_code == 403
    token = client.cookies.get("careplane_csrf")
    assert token
    response = client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": token})
    assert response.status_code == 200


def test_jobs_pages(client: TestClient, db: Database, accounts: Accounts) -> None:
    nurse = accounts.make("mina")
    with db.session() as session:
        job = submit(session, "tests.platform.job_tasks:add", {"a": 1, "b": 1},
                     org_id=nurse.org_id, title="Align tumour sample").id
    _login(client, "mina", "mina-password")
    listing = client.get("/jobs")
    assert "Align tumour sample" in listing.text and "queued" in listing.text
    assert '<strong data-testid="count-queued">1</strong>' in listing.text
    assert '<strong data-testid="count-running">0</strong>' in listing.text
    detail = client.get(f"/jobs/{job}")
    assert detail.status_code == 200 and "Cancel" in detail.text
    assert client.get("/jobs/unknown").status_code == 404


def test_forged_non_ascii_csrf_token_is_refused_not_crashed(client: TestClient,
                                                            accounts: Accounts) -> None:
    accounts.make("mina")
    client.get("/login")
    response = client.post("/login", data={"username": "mina", "password": "mina-password",
                                           "csrf": "é"})
    assert response.status_code == 403
    client.cookies.set("careplane_session", "x")
    assert client.post("/logout", data={"csrf": "é"}).status_code == 403


def test_staff_with_a_second_factor_sign_in_with_a_code(client: TestClient,
                                                       accounts: Accounts) -> None:
    import base64
    import time
    from urllib.parse import parse_qs, urlsplit

    from careplane.security.totp import STEP, code_at

    doctor = accounts.make("doctor")
    uri = client.post("/api/auth/totp", headers=doctor.headers).json()["otpauth_uri"]
    value = parse_qs(urlsplit(uri).query)["secret"][0]
    secret = base64.b32decode(value + "=" * (-len(value) % 8))
    step = int(time.time() // STEP)
    assert client.post("/api/auth/totp/confirm", json={"code": code_at(secret, step)},
                       headers=doctor.headers).status_code == 204

    page = client.get("/login")
    asked = client.post("/login", data={"username": "doctor", "password": doctor.password,
                                        "csrf": _csrf(page.text)})
    assert asked.status_code == 401
    assert 'name="otp"' in asked.text
    assert "careplane_session" not in asked.cookies
    signed_in = client.post("/login", data={"username": "doctor", "password": doctor.password,
                                            "otp": code_at(secret, step + 1),
                                            "csrf": _csrf(asked.text)},
                            follow_redirects=False)
    assert signed_in.status_code == 303
    assert client.get("/").status_code == 200
