"""Tokens of a trusted external OIDC provider: verified by signature, mapped to careplane roles.

The provider's JWKS is served in-process through the fetch seam; nothing touches the network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import select

from careplane.app import create_app
from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.identity import create_org, create_user
from careplane.security.models import Organisation, User
from careplane.security.oidc import ExternalProvider
from careplane.settings import Settings, SettingsError

ISSUER = "https://idp.example.org/realms/hospital"
AUDIENCE = "careplane-api"


class FakeIdp:
    """The provider: signing keys, a JWKS document, and a count of fetches."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})]
        self.fetches = 0
        self.reachable = True

    def jwks(self, url: str) -> bytes:
        assert url == "https://idp.example.org/jwks"
        self.fetches += 1
        if not self.reachable:
            raise OSError("connection refused")
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()

    def token(self, *, key: Any = None, alg: str = "RS256", kid: str | None = "rsa-1",
              **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "f3a1", "iat": now, "exp": now + 300,
                "preferred_username": "dr.house", "name": "Gregory House",
                "realm_access": {"roles": ["doctor", "offline_access"]}, **claims}
        header = {"alg": alg, **({"kid": kid} if kid else {})}
        return jwt.encode(header, {k: v for k, v in body.items() if v is not None},
                          key or self.keys[0], algorithms=[alg])


@pytest.fixture
def idp() -> FakeIdp:
    return FakeIdp()


@pytest.fixture
def oidc_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "oidc_issuer": ISSUER, "oidc_jwks_url": "https://idp.example.org/jwks",
        "oidc_audience": AUDIENCE, "oidc_org": "org-a",
        "oidc_roles_claim": "realm_access.roles",
        "oidc_role_map": {"doctor": "clinician", "it-admin": "admin"}})


@pytest.fixture
def app(oidc_settings: Settings, idp: FakeIdp, db: Database) -> Iterator[FastAPI]:
    with db.session() as session:
        create_org(session, "org-a", "Org A")
    application = create_app(oidc_settings)
    assert isinstance(application.state.oidc_provider, ExternalProvider)
    application.state.oidc_provider = ExternalProvider(oidc_settings, fetch=idp.jwks)
    try:
        yield application
    finally:
        application.state.platform.db.dispose()


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def _me(api: TestClient, token: str) -> Any:
    return api.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})


def test_a_valid_token_is_a_careplane_user(api: TestClient, idp: FakeIdp, db: Database
                                           ) -> None:
    me = _me(api, idp.token())
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["username"] == "dr.house" and body["roles"] == ["clinician"]
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == "dr.house"))
        assert user is not None and user.password_hash is None  # no local password
        assert user.full_name == "Gregory House"
        assert {m.role for m in user.memberships} == {"clinician"}
        org = session.scalar(select(Organisation).where(Organisation.slug == "org-a"))
        assert org is not None and body["org_id"] == org.id
    headers = {"Authorization": f"Bearer {idp.token()}", "Accept": "application/fhir+json"}
    created = api.post("/fhir/Patient", headers={**headers,
                                                 "Content-Type": "application/fhir+json"},
                       content=json.dumps({"resourceType": "Patient"}))
    assert created.status_code == 201, created.text
    # The roles follow the provider: promoted there, an administrator here.
    promoted = _me(api, idp.token(realm_access={"roles": ["it-admin"]}))
    assert promoted.json()["roles"] == ["admin"]
    assert idp.fetches == 1  # the JWKS was fetched once and kept


@pytest.mark.parametrize("change,problem", [
    ({"iss": "https://elsewhere.example.org"}, "unknown issuer"),
    ({"aud": "another-api"}, "another audience"),
    ({"exp": int(time.time()) - 3600}, "not valid"),
    ({"nbf": int(time.time()) + 3600}, "not valid"),
    ({"exp": None}, "not valid"),
    ({"realm_access": {"roles": ["visitor"]}}, "no careplane role"),
    ({"preferred_username": None, "sub": None}, "no usable"),
])
def test_bad_tokens_are_401(api: TestClient, idp: FakeIdp, change: dict[str, Any],
                            problem: str) -> None:
    response = _me(api, idp.token(**change))
    assert response.status_code == 401, response.text
    assert problem in response.json()["error"]["message"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_forged_signatures_and_algorithms_are_401(api: TestClient, idp: FakeIdp) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assert _me(api, idp.token(key=impostor)).status_code == 401
    secret = OctKey.generate_key(256, parameters={"kid": "rsa-1"})
    hs = _me(api, idp.token(key=secret, alg="HS256"))
    assert hs.status_code == 401 and "not accepted" in hs.json()["error"]["message"]
    _header, _, rest = idp.token().partition(".")
    unsigned = "eyJhbGciOiJub25lIn0." + rest.rsplit(".", 1)[0] + "."
    assert _me(api, unsigned).status_code == 401


def test_local_accounts_are_not_taken_over(api: TestClient, idp: FakeIdp,
                                           db: Database) -> None:
    with db.session() as session:
        org = session.scalar(select(Organisation).where(Organisation.slug == "org-a"))
        assert org is not None
        create_user(session, "root-admin", "a-long-local-password", org=org,
                    roles=[Role.admin])
    refused = _me(api, idp.token(preferred_username="root-admin"))
    assert refused.status_code == 401
    assert "local careplane account" in refused.json()["error"]["message"]


def test_key_rotation_is_picked_up_and_refetches_are_limited(api: TestClient, app: FastAPI,
                                                             idp: FakeIdp) -> None:
    clock = [1000.0]
    provider = app.state.oidc_provider
    provider._clock = lambda: clock[0]
    assert _me(api, idp.token()).status_code == 200 and idp.fetches == 1
    rotated = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    idp.keys.append(rotated)
    fresh = idp.token(key=rotated, alg="ES256", kid="ec-2")
    assert _me(api, fresh).status_code == 401  # fetched seconds ago: not again yet
    assert idp.fetches == 1
    clock[0] += 31
    assert _me(api, fresh).status_code == 200 and idp.fetches == 2
    clock[0] += 31
    for _ in range(3):  # unknown key ids cannot make it hammer the provider
        assert _me(api, idp.token(kid="nope")).status_code == 401
    assert idp.fetches == 3
    idp.reachable = False
    clock[0] += 4000  # the keys are old, the provider down: the keys held still serve
    assert _me(api, idp.token()).status_code == 200


def test_provider_down_at_first_use_is_401_not_500(api: TestClient, idp: FakeIdp) -> None:
    idp.reachable = False
    response = _me(api, idp.token())
    assert response.status_code == 401
    assert "cannot be fetched" in response.json()["error"]["message"]


def test_smart_scopes_in_the_token_narrow_the_roles(api: TestClient, idp: FakeIdp) -> None:
    token = idp.token(scope="openid user/Observation.rs", azp="smart-app")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    assert api.get("/fhir/Observation", headers=headers).status_code == 200
    assert api.get("/fhir/Patient", headers=headers).status_code == 403


def test_careplane_tokens_still_work(api: TestClient, db: Database) -> None:
    from datetime import timedelta

    from careplane.security.identity import issue_token

    with db.session() as session:
        org = session.scalar(select(Organisation).where(Organisation.slug == "org-a"))
        assert org is not None
        user = create_user(session, "local-nurse", "a-long-local-password", org=org,
                           roles=[Role.clinician])
        token = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=1)).token
    assert _me(api, token).json()["username"] == "local-nurse"


@pytest.mark.parametrize("change,problem", [
    ({"oidc_jwks_url": "http://idp.example.org/jwks"}, "https"),
    ({"oidc_role_map": {"doctor": "surgeon"}}, "not a careplane role"),
])
def test_bad_configuration_stops_the_start(oidc_settings: Settings, change: dict[str, Any],
                                           problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        create_app(oidc_settings.model_copy(update=change))


def test_incomplete_configuration_is_refused() -> None:
    from careplane.settings import load_settings

    with pytest.raises(SettingsError, match="together"):
        load_settings(env="test", oidc_issuer=ISSUER)
