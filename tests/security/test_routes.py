"""The password-to-token exchange at /api/auth and the bearer-token checks on every route."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from careplane.platform.db import Database, utcnow
from careplane.security import Role
from careplane.security.identity import MAX_FAILED_LOGINS
from careplane.security.models import AuthToken
from tests.conftest import Accounts


def test_token_exchange_and_me(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    response = client.post("/api/auth/token",
                           json={"username": "nurse", "password": nurse.password})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "nurse"
    assert me.json()["roles"] == ["clinician"]
    assert me.json()["org_id"] == nurse.org_id


def test_wrong_password_is_401_and_lockout_refuses_the_right_one(
        client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    for _ in range(MAX_FAILED_LOGINS):
        response = client.post("/api/auth/token",
                               json={"username": "nurse", "password": "not-the-password"})
        assert response.status_code == 401
        assert "password" in response.json()["error"]["message"]
    response = client.post("/api/auth/token",
                           json={"username": "nurse", "password": nurse.password})
    assert response.status_code == 401


def test_token_for_an_organisation_the_user_is_not_in_is_refused(
        client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician, org="org-a")
    other_org = accounts.org("org-b")
    response = client.post("/api/auth/token", json={
        "username": "nurse", "password": nurse.password, "organisation": other_org})
    assert response.status_code == 403


def test_no_credentials_or_malformed_header_is_401(client: TestClient) -> None:
    assert client.get("/api/auth/me").status_code == 401
    for header in ("Basic abc", "Bearer", "Bearer    ", "token", "Bearer not-a-token"):
        response = client.get("/api/auth/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_is_rejected(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    assert client.get("/api/auth/me", headers=nurse.headers).status_code == 200
    assert client.post("/api/auth/revoke", headers=nurse.headers).status_code == 204
    response = client.get("/api/auth/me", headers=nurse.headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_expired_token_is_rejected(client: TestClient, accounts: Accounts,
                                   db: Database) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    with db.session() as session:
        for row in session.query(AuthToken).all():
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert client.get("/api/auth/me", headers=nurse.headers).status_code == 401
