"""The OAuth2/OIDC server over HTTP: discovery, every grant, PKCE, rotation, revocation,
introspection, and the standard error body on every failure."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.identity import link_patient
from careplane.security.models import Organisation, User
from tests.conftest import Accounts
from tests.security.conftest import REDIRECT, authorize, pkce, register, sign_in

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _token(client: TestClient, data: dict[str, str],
           headers: dict[str, str] | None = None) -> Any:
    return client.post("/oauth2/token", data=data, headers=headers or {})


def _oauth_error(response: Any, status: int, error: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    return body


def _claims(client: TestClient, token: str) -> dict[str, Any]:
    keyset = KeySet.import_key_set(client.get("/oauth2/jwks").json())
    return dict(jwt.decode(token, keyset, algorithms=["ES256"]).claims)


def test_discovery_documents(client: TestClient) -> None:
    oidc = client.get("/.well-known/openid-configuration").json()
    assert oidc["issuer"] == "http://testserver"
    assert oidc["token_endpoint"] == "http://testserver/oauth2/token"
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in oidc["token_endpoint_auth_methods_supported"]
    smart = client.get("/fhir/.well-known/smart-configuration").json()
    assert smart["authorization_endpoint"] == "http://testserver/oauth2/authorize"
    assert "permission-v2" in smart["capabilities"]
    assert "client-confidential-asymmetric" in smart["capabilities"]
    keys = client.get("/oauth2/jwks").json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and "d" not in keys[0]


def test_client_credentials_with_basic_auth(client: TestClient, accounts: Accounts,
                                            db: Database) -> None:
    app = register(db, accounts.org("org-a"), "system/*.rs")
    response = _token(client, {"grant_type": "client_credentials"}, app.basic)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert body["expires_in"] == 3600 and "refresh_token" not in body
    claims = _claims(client, body["access_token"])
    assert claims["iss"] == claims["aud"] == "http://testserver"
    assert claims["client_id"] == app.client_id and claims["scope"] == "system/*.rs"
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == f"client:{app.client_id}"
    assert me.json()["roles"] == ["service"]


def test_client_secret_post_and_narrower_scope(client: TestClient, accounts: Accounts,
                                               db: Database) -> None:
    app = register(db, accounts.org("org-a"), "system/*.rs system/imaging:*.rs")
    response = _token(client, {"grant_type": "client_credentials", "client_id": app.client_id,
                               "client_secret": app.secret or "", "scope": "system/Patient.r"})
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.r"
    _oauth_error(_token(client, {"grant_type": "client_credentials", "scope": "system/*.cruds"},
                        app.basic), 400, "invalid_scope")


def test_bad_client_credentials(client: TestClient, accounts: Accounts, db: Database) -> None:
    app = register(db, accounts.org("org-a"), "system/*.rs")
    wrong = base64.b64encode(f"{app.client_id}:not-the-secret".encode()).decode()
    body = _oauth_error(_token(client, {"grant_type": "client_credentials"},
                               {"Authorization": f"Basic {wrong}"}), 401, "invalid_client")
    assert "wrong credentials" in body["error_description"]
    unknown = base64.b64encode(b"no-such-client:whatever").decode()
    response = _token(client, {"grant_type": "client_credentials"},
                      {"Authorization": f"Basic {unknown}"})
    _oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")
    _oauth_error(_token(client, {"grant_type": "client_credentials"},
                        {"Authorization": "Basic !!!"}), 401, "invalid_client")
    _oauth_error(_token(client, {"grant_type": "client_credentials"}), 401, "invalid_client")
    _oauth_error(_token(client, {}, app.basic), 400, "invalid_request")
    _oauth_error(_token(client, {"grant_type": "password"}, app.basic), 400,
                 "unsupported_grant_type")
    _oauth_error(_token(client, {"grant_type": "authorization_code", "code": "x"}, app.basic),
                 400, "unauthorized_client")
    _oauth_error(_token(client, {"grant_type": "client_credentials",
                                 "client_secret": app.secret or ""}, app.basic),
                 400, "invalid_request")
    repeated = client.post("/oauth2/token", headers={**app.basic, **FORM},
                           content="grant_type=client_credentials&grant_type=client_credentials")
    _oauth_error(repeated, 400, "invalid_request")
    as_json = client.post("/oauth2/token", headers=app.basic,
                          json={"grant_type": "client_credentials"})
    _oauth_error(as_json, 400, "invalid_request")


def _rsa_client(db: Database, org_id: str) -> tuple[Any, RSAKey]:
    key = RSAKey.generate_key(2048, parameters={"kid": "app-key-1"})
    jwks = {"keys": [key.as_dict(private=False)]}
    return register(db, org_id, "system/*.rs", auth_method="private_key_jwt", jwks=jwks), key


def _assertion(key: RSAKey, client_id: str, *, aud: str = "http://testserver/oauth2/token",
               jti: str = "assertion-1", lifetime: int = 240) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"},
                      {"iss": client_id, "sub": client_id, "aud": aud, "jti": jti,
                       "exp": now + lifetime, "iat": now}, key, algorithms=["RS384"])


def test_client_credentials_with_private_key_jwt(client: TestClient, accounts: Accounts,
                                                 db: Database) -> None:
    app, key = _rsa_client(db, accounts.org("org-a"))
    form = {"grant_type": "client_credentials", "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": _assertion(key, app.client_id)}
    response = _token(client, form)
    assert response.status_code == 200, response.text
    # The same assertion again is a replay.
    body = _oauth_error(_token(client, form), 401, "invalid_client")
    assert "already used" in body["error_description"]
    for bad in (_assertion(key, app.client_id, aud="https://elsewhere/token", jti="a2"),
                _assertion(key, app.client_id, jti="a3", lifetime=3600),
                _assertion(RSAKey.generate_key(2048, parameters={"kid": "app-key-1"}),
                           app.client_id, jti="a4"),
                "not.a.jwt", "garbage"):
        _oauth_error(_token(client, {**form, "client_assertion": bad}), 401, "invalid_client")
    _oauth_error(_token(client, {**form, "client_assertion_type": "urn:other"}), 400,
                 "invalid_request")
    # A secret is no way in for a key-only client.
    raw = base64.b64encode(f"{app.client_id}:guess".encode()).decode()
    _oauth_error(_token(client, {"grant_type": "client_credentials"},
                        {"Authorization": f"Basic {raw}"}), 401, "invalid_client")


def _code_flow(client: TestClient, accounts: Accounts, db: Database,
               scope: str = "openid fhirUser launch/patient patient/*.rs offline_access"
               ) -> tuple[Any, dict[str, str], str]:
    doctor = accounts.make("doctor", Role.clinician)
    app = register(db, doctor.org_id, scope, auth_method="none", redirect_uris=[REDIRECT])
    sign_in(client, "doctor", doctor.password)
    verifier, challenge = pkce()
    callback = authorize(client, app, scope, patient="pat-123", challenge=challenge,
                         nonce="n-0S6")
    assert callback["state"] == "xyz" and callback["iss"] == "http://testserver"
    return app, callback, verifier


def test_authorization_code_with_pkce(client: TestClient, accounts: Accounts,
                                      db: Database) -> None:
    app, callback, verifier = _code_flow(client, accounts, db)
    client.cookies.clear()
    form = {"grant_type": "authorization_code", "code": callback["code"],
            "redirect_uri": REDIRECT, "code_verifier": verifier, "client_id": app.client_id}
    response = _token(client, form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == "pat-123"
    assert body["refresh_token"] and body["id_token"]
    access = _claims(client, body["access_token"])
    assert access["patient"] == "pat-123" and access["client_id"] == app.client_id
    id_token = _claims(client, body["id_token"])
    assert id_token["aud"] == app.client_id and id_token["nonce"] == "n-0S6"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/api/auth/me", headers=headers).json()["username"] == "doctor"

    # Replaying the code fails and revokes what the first exchange issued.
    _oauth_error(_token(client, form), 400, "invalid_grant")
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    _oauth_error(_token(client, {"grant_type": "refresh_token", "client_id": app.client_id,
                                 "refresh_token": body["refresh_token"]}), 400, "invalid_grant")


def test_code_exchange_checks_verifier_redirect_and_client(client: TestClient,
                                                           accounts: Accounts,
                                                           db: Database) -> None:
    app, callback, verifier = _code_flow(client, accounts, db)
    other = register(db, accounts.org("org-a"), "patient/*.rs", auth_method="none",
                     redirect_uris=[REDIRECT])
    base = {"grant_type": "authorization_code", "code": callback["code"],
            "redirect_uri": REDIRECT, "code_verifier": verifier, "client_id": app.client_id}
    _oauth_error(_token(client, {**base, "client_id": other.client_id}), 400, "invalid_grant")
    _oauth_error(_token(client, {**base, "code": "made-up"}), 400, "invalid_grant")
    _oauth_error(_token(client, {k: v for k, v in base.items() if k != "code_verifier"}), 400,
                 "invalid_request")
    # A wrong verifier burns the code: it was presented once.
    _oauth_error(_token(client, {**base, "code_verifier": "x" * 50}), 400, "invalid_grant")
    _oauth_error(_token(client, base), 400, "invalid_grant")


def test_code_exchange_with_wrong_redirect_uri(client: TestClient, accounts: Accounts,
                                               db: Database) -> None:
    app, callback, verifier = _code_flow(client, accounts, db)
    body = _oauth_error(_token(client, {
        "grant_type": "authorization_code", "code": callback["code"], "client_id": app.client_id,
        "redirect_uri": "http://localhost:9999/other", "code_verifier": verifier}),
        400, "invalid_grant")
    assert "redirect_uri" in body["error_description"]


def test_authorize_refuses_plain_pkce_and_missing_pkce(client: TestClient, accounts: Accounts,
                                                       db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    app = register(db, doctor.org_id, "user/*.rs", auth_method="none", redirect_uris=[REDIRECT])
    sign_in(client, "doctor", doctor.password)
    verifier, _challenge = pkce()
    callback = authorize(client, app, "user/*.rs", challenge=verifier,
                         code_challenge_method="plain")
    assert callback["error"] == "invalid_request" and "S256" in callback["error_description"]
    assert callback["state"] == "xyz"
    params = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT,
              "scope": "user/*.rs", "state": "s1"}
    response = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert response.status_code == 303
    assert "PKCE" in response.headers["location"]
    wrong_type = client.get("/oauth2/authorize", params={**params, "response_type": "token"},
                            follow_redirects=False)
    assert "unsupported_response_type" in wrong_type.headers["location"]
    bad_scope = authorize(client, app, "user/*.cruds", challenge=_challenge)
    assert bad_scope["error"] == "invalid_scope"
    bad_aud = authorize(client, app, "user/*.rs", challenge=_challenge,
                        aud="https://other.example/fhir")
    assert bad_aud["error"] == "invalid_request"


def test_authorize_never_redirects_to_an_unregistered_uri(client: TestClient,
                                                          accounts: Accounts,
                                                          db: Database) -> None:
    app = register(db, accounts.org("org-a"), "user/*.rs", auth_method="none",
                   redirect_uris=[REDIRECT])
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": app.client_id, "scope": "user/*.rs",
              "redirect_uri": "https://attacker.example/cb", "code_challenge": challenge,
              "code_challenge_method": "S256"}
    response = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    _oauth_error(response, 400, "invalid_request")
    response = client.get("/oauth2/authorize", params={**params, "client_id": "nobody"},
                          follow_redirects=False)
    _oauth_error(response, 400, "invalid_client")


def test_authorize_sends_strangers_to_login_and_back(client: TestClient, accounts: Accounts,
                                                     db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    app = register(db, doctor.org_id, "user/*.rs", auth_method="none", redirect_uris=[REDIRECT])
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT,
              "scope": "user/*.rs", "code_challenge": challenge,
              "code_challenge_method": "S256", "state": "st"}
    response = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=%2Foauth2%2Fauthorize%3F")
    login_page = client.get(response.headers["location"])
    assert login_page.status_code == 200
    csrf = client.cookies.get("careplane_csrf")
    next_value = login_page.text.split('name="next" value="', 1)[1].split('"', 1)[0]
    back = client.post("/login", data={"username": "doctor", "password": doctor.password,
                                       "csrf": csrf, "next": next_value.replace("&amp;", "&")},
                       follow_redirects=False)
    assert back.headers["location"].startswith("/oauth2/authorize?")
    consent = client.get(back.headers["location"])
    assert consent.status_code == 200 and "Test app" in consent.text


def test_user_can_decline_and_csrf_is_required(client: TestClient, accounts: Accounts,
                                               db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    app = register(db, doctor.org_id, "user/*.rs", auth_method="none", redirect_uris=[REDIRECT])
    csrf = sign_in(client, "doctor", doctor.password)
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": app.client_id, "redirect_uri": REDIRECT,
              "scope": "user/*.rs", "code_challenge": challenge,
              "code_challenge_method": "S256", "state": "st"}
    declined = client.post("/oauth2/authorize", data={**params, "csrf": csrf,
                                                      "decision": "deny"},
                           follow_redirects=False)
    assert declined.status_code == 303
    assert "error=access_denied" in declined.headers["location"]
    forged = client.post("/oauth2/authorize", data={**params, "csrf": "forged",
                                                    "decision": "allow"},
                         follow_redirects=False)
    _oauth_error(forged, 403, "access_denied")


def test_refresh_token_rotation_and_reuse_detection(client: TestClient, accounts: Accounts,
                                                    db: Database) -> None:
    app, callback, verifier = _code_flow(client, accounts, db)
    first = _token(client, {"grant_type": "authorization_code", "code": callback["code"],
                            "redirect_uri": REDIRECT, "code_verifier": verifier,
                            "client_id": app.client_id}).json()
    refresh = {"grant_type": "refresh_token", "client_id": app.client_id}
    second = _token(client, {**refresh, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second_body = second.json()
    assert second_body["refresh_token"] != first["refresh_token"]
    narrower = _token(client, {**refresh, "refresh_token": second_body["refresh_token"],
                               "scope": "patient/Observation.r offline_access"})
    assert narrower.status_code == 200
    assert narrower.json()["scope"] == "offline_access patient/Observation.r"
    third = narrower.json()
    # The old one again: the family is revoked, including the newest tokens.
    _oauth_error(_token(client, {**refresh, "refresh_token": first["refresh_token"]}), 400,
                 "invalid_grant")
    _oauth_error(_token(client, {**refresh, "refresh_token": third["refresh_token"]}), 400,
                 "invalid_grant")
    headers = {"Authorization": f"Bearer {third['access_token']}"}
    assert client.get("/api/auth/me", headers=headers).status_code == 401


def test_patient_user_gets_their_own_record_as_launch_context(
        client: TestClient, accounts: Accounts, db: Database) -> None:
    pat = accounts.make("pat", Role.patient)
    with db.session() as session:
        user = session.get(User, pat.user_id)
        org = session.get(Organisation, pat.org_id)
        assert user is not None and org is not None
        link_patient(session, user, org, "pat-own-1")
    scope = "openid fhirUser launch/patient patient/*.rs"
    app = register(db, pat.org_id, scope, auth_method="none", redirect_uris=[REDIRECT])
    sign_in(client, "pat", pat.password)
    verifier, challenge = pkce()
    callback = authorize(client, app, scope, patient="someone-else", challenge=challenge)
    body = _token(client, {"grant_type": "authorization_code", "code": callback["code"],
                           "redirect_uri": REDIRECT, "code_verifier": verifier,
                           "client_id": app.client_id}).json()
    assert body["patient"] == "pat-own-1"
    assert _claims(client, body["id_token"])["fhirUser"].endswith("/fhir/Patient/pat-own-1")


def test_revocation_and_introspection(client: TestClient, accounts: Accounts,
                                      db: Database) -> None:
    org_a = accounts.org("org-a")
    app = register(db, org_a, "system/*.rs")
    other_org_app = register(db, accounts.org("org-b"), "system/*.rs")
    token = _token(client, {"grant_type": "client_credentials"}, app.basic).json()
    access = token["access_token"]
    info = client.post("/oauth2/introspect", data={"token": access}, headers=app.basic).json()
    assert info["active"] is True and info["client_id"] == app.client_id
    assert info["scope"] == "system/*.rs"
    assert client.post("/oauth2/introspect", data={"token": access},
                       headers=other_org_app.basic).json() == {"active": False}
    assert client.post("/oauth2/introspect", data={"token": "junk"},
                       headers=app.basic).json() == {"active": False}
    _oauth_error(client.post("/oauth2/introspect", data={"token": access}), 401,
                 "invalid_client")
    _oauth_error(client.post("/oauth2/introspect", data={}, headers=app.basic), 400,
                 "invalid_request")
    # Another client cannot revoke it (silently ignored), its own client can.
    assert client.post("/oauth2/revoke", data={"token": access},
                       headers=other_org_app.basic).status_code == 200
    headers = {"Authorization": f"Bearer {access}"}
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    assert client.post("/oauth2/revoke", data={"token": access},
                       headers=app.basic).status_code == 200
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    assert client.post("/oauth2/introspect", data={"token": access},
                       headers=app.basic).json() == {"active": False}
    assert client.post("/oauth2/revoke", data={"token": "unknown"},
                       headers=app.basic).status_code == 200


def test_userinfo(client: TestClient, accounts: Accounts, db: Database) -> None:
    app, callback, verifier = _code_flow(client, accounts, db,
                                         "openid profile launch/patient patient/*.rs")
    body = _token(client, {"grant_type": "authorization_code", "code": callback["code"],
                           "redirect_uri": REDIRECT, "code_verifier": verifier,
                           "client_id": app.client_id}).json()
    info = client.get("/oauth2/userinfo",
                      headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200 and info.json()["preferred_username"] == "doctor"
    assert client.get("/oauth2/userinfo").status_code == 401


def test_no_secret_reaches_the_logs(client: TestClient, accounts: Accounts, db: Database,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = register(db, accounts.org("org-a"), "system/*.rs")
    issued = _token(client, {"grant_type": "client_credentials"}, app.basic).json()
    _token(client, {"grant_type": "client_credentials", "client_id": app.client_id,
                    "client_secret": "wrong-secret-value"})
    assert app.secret
    secrets_seen = (app.secret, issued["access_token"], "wrong-secret-value",
                    base64.b64encode(f"{app.client_id}:{app.secret}".encode()).decode())
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        for secret in secrets_seen:
            assert secret not in text, record
