"""JWT access tokens at the resource side: every way a token can be wrong is a 401."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from careplane.platform.db import Database, utcnow
from careplane.security import Role
from careplane.security.access_tokens import issue_access_token
from careplane.security.identity import hash_token
from careplane.security.keys import current_key
from careplane.security.models import AuthToken, Membership
from tests.conftest import Accounts

ISSUER = "http://testserver"


def _issue(db: Database, secret: str, user_id: str, org_id: str, **kwargs: Any) -> str:
    with db.session() as session:
        return issue_access_token(session, secret, issuer=ISSUER, user_id=user_id,
                                  org_id=org_id, client_id="test-client",
                                  scope=kwargs.pop("scope", "user/*.rs"), **kwargs).token


def _forge(db: Database, secret: str, user_id: str, org_id: str, *, key: ECKey | None = None,
           kid: str | None = None, **claims: Any) -> str:
    """A token signed with our real key (or ``key``) whose claims are whatever the test says,
    registered like a real one so that only the claim under test is wrong."""
    with db.session() as session:
        our_kid, our_key = current_key(session, secret)
        now = int(time.time())
        body = {"iss": ISSUER, "aud": ISSUER, "sub": user_id, "client_id": "test-client",
                "exp": now + 600, "iat": now, "jti": secrets.token_hex(8),
                "scope": "user/*.rs", "org": org_id, **claims}
        token = jwt.encode({"alg": "ES256", "kid": kid or our_kid, "typ": "at+jwt"}, body,
                           key or our_key)
        session.add(AuthToken(id=body["jti"], token_hash=hash_token(token), kind="access",
                              user_id=user_id, org_id=org_id, client_id="test-client",
                              scopes="user/*.rs", expires_at=utcnow() + timedelta(minutes=10)))
    return token


def _me(client: TestClient, token: str) -> Any:
    value = f"Bearer {token}".encode("latin-1")  # raw bytes: lets a test send non-ASCII
    return client.get("/api/auth/me", headers={"Authorization": value})  # type: ignore[dict-item]


def _refused(client: TestClient, token: str, why: str) -> None:
    response = _me(client, token)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert why in challenge, challenge


def test_valid_jwt_is_accepted(client: TestClient, accounts: Accounts, db: Database) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    secret = client.app.state.platform.settings.secret_key  # type: ignore[attr-defined]
    token = _issue(db, secret, nurse.user_id, nurse.org_id)
    assert _me(client, token).json()["username"] == "nurse"
    assert _me(client, _forge(db, secret, nurse.user_id, nurse.org_id)).status_code == 200


def test_expired_revoked_audience_issuer(client: TestClient, accounts: Accounts,
                                         db: Database) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    secret = client.app.state.platform.settings.secret_key  # type: ignore[attr-defined]
    uid, org = nurse.user_id, nurse.org_id
    _refused(client, _forge(db, secret, uid, org, exp=int(time.time()) - 120), "expired")
    _refused(client, _forge(db, secret, uid, org, aud="https://other.example"),
             "another audience")
    _refused(client, _forge(db, secret, uid, org, iss="https://idp.elsewhere"),
             "unknown issuer")
    stranger = ECKey.generate_key("P-256")
    _refused(client, _forge(db, secret, uid, org, key=stranger), "does not verify")
    _refused(client, _forge(db, secret, uid, org, key=stranger, kid="stranger"),
             "unknown or expired key")
    token = _issue(db, secret, uid, org)
    with db.session() as session:
        row = session.scalar(select(AuthToken).where(AuthToken.token_hash == hash_token(token)))
        assert row is not None
        row.revoked_at = utcnow()
    _refused(client, token, "revoked")


def test_malformed_and_tampered_tokens(client: TestClient, accounts: Accounts,
                                       db: Database) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    secret = client.app.state.platform.settings.secret_key  # type: ignore[attr-defined]
    token = _issue(db, secret, nurse.user_id, nurse.org_id)
    header, payload, signature = token.split(".")
    for bad in ("a.b.c", "..", f"{header}.{payload}.", f"{header}.{payload}.AAAA",
                f"{header}.{payload[:-4]}AAAA.{signature}", "é.é.é"):
        response = _me(client, bad)
        assert response.status_code == 401, bad
    _refused(client, "x" * 9000, "too long")


def test_removed_role_takes_effect_at_once(client: TestClient, accounts: Accounts,
                                           db: Database) -> None:
    nurse = accounts.make("nurse", Role.clinician)
    secret = client.app.state.platform.settings.secret_key  # type: ignore[attr-defined]
    token = _issue(db, secret, nurse.user_id, nurse.org_id)
    with db.session() as session:
        for membership in session.scalars(select(Membership).where(
                Membership.user_id == nurse.user_id)):
            session.delete(membership)
    _refused(client, token, "no longer belongs")
