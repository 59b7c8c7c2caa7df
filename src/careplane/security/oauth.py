"""The built-in OAuth2 authorization server: clients, grants, revocation and introspection.

Service functions only (the HTTP surface is :mod:`careplane.security.oauth_routes`). Every
failure is an :class:`OAuthError` carrying the RFC 6749 error code, so the routes answer with
the standard ``{"error": ..., "error_description": ...}`` body. Nothing here logs a secret:
client secrets, codes and refresh tokens exist in clear only in the response that hands them
out, and are stored as SHA-256 hashes.

Grants: ``client_credentials`` (client_secret_basic / client_secret_post / private_key_jwt),
``authorization_code`` with PKCE (S256 only; ``plain`` is refused) and ``refresh_token`` with
rotation (replaying a used refresh token or authorization code revokes everything issued from
it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from careplane.platform.db import utcnow
from careplane.security._principal import Role
from careplane.security.access_tokens import (
    TokenRejected,
    is_jwt,
    issue_access_token,
    issue_id_token,
    linked_patient,
    resolve_access_token,
)
from careplane.security.identity import IdentityError, add_membership, hash_token
from careplane.security.models import AuthToken, Organisation, User
from careplane.security.oauth_models import (
    AuthorizationCode,
    Client,
    ClientAssertion,
    RefreshToken,
)
from careplane.security.scopes import ScopeError, ScopeSet

__all__ = ["ASSERTION_ALGS", "AUTH_METHODS", "AuthorizationRequest", "ClientCredentials",
           "Issuer", "NewClient", "OAuthError", "TokenResponse", "authenticate_client",
           "create_authorization_code", "create_client", "exchange", "introspect",
           "patient_for", "revoke", "validate_authorization_request"]

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
ASSERTION_ALGS = ["RS256", "RS384", "ES256", "ES384"]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CODE_LIFETIME = timedelta(minutes=1)
REFRESH_LIFETIME = timedelta(days=30)
ONLINE_REFRESH_LIFETIME = timedelta(hours=12)
ASSERTION_MAX_LIFETIME = timedelta(minutes=5)
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")


class OAuthError(Exception):
    """An RFC 6749 error: ``error`` is the standard code, ``description`` says what to fix."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: Mapping[str, str] | None = None, *, redirect_uri: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})
        # Set on authorization errors that go back to the client's (verified) redirect URI.
        self.redirect_uri = redirect_uri
        self.state = state

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- clients -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewClient:
    client: Client
    secret: str | None


def _validate_redirect_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.fragment or not parts.scheme or not (parts.netloc or parts.scheme not in (
            "http", "https")):
        raise IdentityError(f"redirect URI {uri!r} must be absolute and carry no fragment")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise IdentityError(f"redirect URI {uri!r} must use https (http only for localhost)")
    return uri


def _parse_jwks(jwks: Mapping[str, Any]) -> KeySet:
    try:
        keyset = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise IdentityError(f"the client's JWKS is not valid: {exc}") from exc
    for key in keyset.keys:
        if not isinstance(key, (RSAKey, ECKey)) or key.is_private:
            raise IdentityError("the client's JWKS must hold public RSA or EC keys only")
    if not keyset.keys:
        raise IdentityError("the client's JWKS holds no key")
    return keyset


def create_client(session: Session, *, org: Organisation, name: str, scope: str,
                  redirect_uris: list[str] | None = None,
                  grant_types: list[str] | None = None,
                  auth_method: str = "client_secret_basic",
                  jwks: Mapping[str, Any] | None = None) -> NewClient:
    """Register an application; returns it with its secret (shown once, stored hashed)."""
    if auth_method not in AUTH_METHODS:
        raise IdentityError(f"auth method must be one of {', '.join(AUTH_METHODS)}")
    try:
        ScopeSet.parse(scope)
    except ScopeError as exc:
        raise IdentityError(str(exc)) from exc
    uris = [_validate_redirect_uri(u) for u in redirect_uris or []]
    if grant_types is None:
        grant_types = (["authorization_code", "refresh_token"] if uris else []) + (
            ["client_credentials"] if auth_method != "none" else [])
    if not grant_types:
        raise IdentityError("the client could use no grant: a public client needs a redirect "
                            "URI")
    unknown = set(grant_types) - set(GRANT_TYPES)
    if unknown:
        raise IdentityError(f"unknown grant types: {', '.join(sorted(unknown))}")
    if "authorization_code" in grant_types and not uris:
        raise IdentityError("an authorization-code client needs at least one redirect URI")
    if auth_method == "none" and "client_credentials" in grant_types:
        raise IdentityError("a public client (auth method none) cannot use client credentials")
    if auth_method == "private_key_jwt":
        if not jwks:
            raise IdentityError("private_key_jwt needs the client's public keys (a JWKS)")
        _parse_jwks(jwks)
    client_id = secrets.token_urlsafe(18)
    secret = secrets.token_urlsafe(32) if auth_method.startswith("client_secret") else None
    client = Client(id=client_id, org_id=org.id, name=name or client_id,
                    auth_method=auth_method, secret_hash=_digest(secret) if secret else None,
                    jwks=dict(jwks) if jwks else None, redirect_uris=uris,
                    grant_types=list(grant_types), scope=str(ScopeSet.parse(scope)))
    if "client_credentials" in grant_types:
        user = User(username=f"client:{client_id}", full_name=f"{client.name} (service)",
                    password_hash=None)
        session.add(user)
        session.flush()
        add_membership(session, user, org, Role.service)
        client.service_user_id = user.id
    session.add(client)
    session.flush()
    return NewClient(client, secret)


@dataclass(frozen=True)
class ClientCredentials:
    """What a request presented to identify its client (from the header and the form)."""

    basic: tuple[str, str] | None = None
    form_id: str | None = None
    form_secret: str | None = None
    assertion_type: str | None = None
    assertion: str | None = None

    @classmethod
    def from_request(cls, authorization: str | None, form: Mapping[str, str]
                     ) -> ClientCredentials:
        basic = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise OAuthError("invalid_client", "client authentication must use HTTP Basic",
                                 401, {"WWW-Authenticate": 'Basic realm="careplane"'})
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
                client_id, sep, secret = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise OAuthError("invalid_client", "malformed HTTP Basic credentials", 401,
                                 {"WWW-Authenticate": 'Basic realm="careplane"'})
            basic = (unquote(client_id), unquote(secret))
        return cls(basic=basic, form_id=form.get("client_id") or None,
                   form_secret=form.get("client_secret") or None,
                   assertion_type=form.get("client_assertion_type") or None,
                   assertion=form.get("client_assertion") or None)


def _invalid_client(description: str, basic: bool) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="careplane"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


def authenticate_client(session: Session, creds: ClientCredentials, *, issuer: str,
                        token_endpoint: str) -> Client:
    """Identify and authenticate the client by exactly one method."""
    methods = sum([creds.basic is not None, creds.form_secret is not None,
                   creds.assertion is not None or creds.assertion_type is not None])
    if methods > 1:
        raise OAuthError("invalid_request", "use exactly one client authentication method")
    if creds.assertion is not None or creds.assertion_type is not None:
        return _authenticate_assertion(session, creds, issuer=issuer,
                                       token_endpoint=token_endpoint)
    client_id = creds.basic[0] if creds.basic else creds.form_id
    if creds.basic and creds.form_id and creds.form_id != creds.basic[0]:
        raise OAuthError("invalid_request", "client_id differs from the authenticated client")
    if not client_id:
        raise _invalid_client("no client authentication was presented", False)
    client = session.get(Client, client_id)
    if client is None or not client.is_active:
        # Same answer as a wrong secret: whether a client id exists is not disclosed.
        raise _invalid_client("unknown client or wrong credentials", creds.basic is not None)
    secret = creds.basic[1] if creds.basic else creds.form_secret
    if client.auth_method in ("client_secret_basic", "client_secret_post"):
        if secret is None or client.secret_hash is None or not hmac.compare_digest(
                _digest(secret), client.secret_hash):
            raise _invalid_client("unknown client or wrong credentials",
                                  creds.basic is not None)
        return client
    if client.auth_method == "none":
        if secret is not None:
            raise _invalid_client("this public client has no secret", creds.basic is not None)
        return client
    raise _invalid_client(f"this client must authenticate with {client.auth_method}",
                          creds.basic is not None)


def _authenticate_assertion(session: Session, creds: ClientCredentials, *, issuer: str,
                            token_endpoint: str) -> Client:
    if creds.assertion_type != ASSERTION_TYPE or not creds.assertion:
        raise OAuthError("invalid_request",
                         f"client_assertion_type must be {ASSERTION_TYPE} with a client_assertion")
    header_claims = _peek(creds.assertion)
    if header_claims is None:
        raise _invalid_client("the client assertion is not a well-formed JWT", False)
    header, claims = header_claims
    client_id = claims.get("sub")
    if not isinstance(client_id, str) or claims.get("iss") != client_id or (
            creds.form_id and creds.form_id != client_id):
        raise _invalid_client("the assertion's iss and sub must both be the client id", False)
    client = session.get(Client, client_id)
    if client is None or not client.is_active or client.auth_method != "private_key_jwt" \
            or not client.jwks:
        raise _invalid_client("unknown client or wrong credentials", False)
    keyset = _parse_jwks(client.jwks)
    kid = header.get("kid")
    candidates = [k for k in keyset.keys if kid is None or k.kid == kid]
    if kid is None and len(candidates) != 1:
        raise _invalid_client("the assertion names no key (kid) and the client has several",
                              False)
    verified = None
    for key in candidates:
        try:
            verified = jwt.decode(creds.assertion, key, algorithms=ASSERTION_ALGS).claims
            break
        except (JoseError, ValueError, TypeError):
            continue
    if verified is None:
        raise _invalid_client("the client assertion's signature does not verify", False)
    registry = jwt.JWTClaimsRegistry(
        leeway=30, exp={"essential": True}, jti={"essential": True},
        aud={"essential": True, "values": [token_endpoint, issuer]})
    try:
        registry.validate(verified)
    except JoseError as exc:
        raise _invalid_client(f"the client assertion is not acceptable ({exc.error})",
                              False) from exc
    now = utcnow()
    exp = verified["exp"]
    if not isinstance(exp, int) or exp > int((now + ASSERTION_MAX_LIFETIME).timestamp()) + 30:
        raise _invalid_client("the client assertion must expire within 5 minutes", False)
    try:
        with session.begin_nested():
            session.add(ClientAssertion(client_id=client.id, jti=str(verified["jti"])[:255],
                                        expires_at=now + ASSERTION_MAX_LIFETIME * 2))
    except IntegrityError as exc:
        raise _invalid_client("this client assertion was already used", False) from exc
    return client


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims before verification: only to find the client and its key."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError):
        return None
    return (dict(compact.headers()), claims) if isinstance(claims, dict) else None


# --- authorization requests -----------------------------------------------------------------


@dataclass
class AuthorizationRequest:
    """A checked ``/oauth2/authorize`` request (what the consent page shows and posts back)."""

    client: Client
    redirect_uri: str
    scope: ScopeSet
    state: str | None
    code_challenge: str
    nonce: str | None
    aud: str | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def wants_patient(self) -> bool:
        return "launch/patient" in self.scope.other or any(
            r.context == "patient" for r in self.scope.resources)


def validate_authorization_request(session: Session, params: Mapping[str, str], *,
                                   issuer: str) -> AuthorizationRequest:
    """Check an authorization request.

    Errors about the client or the redirect URI are raised with status 400 and must be shown
    to the user (never redirected: the URI is not trusted); the others are for
    :func:`error_redirect` to send back to the client.
    """
    client_id = params.get("client_id")
    client = session.get(Client, client_id) if client_id else None
    if client is None or not client.is_active:
        raise OAuthError("invalid_client", "unknown client_id")
    if "authorization_code" not in client.grant_types:
        raise OAuthError("unauthorized_client",
                         "this client may not use the authorization code grant")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if redirect_uri is None or redirect_uri not in client.redirect_uris:
        raise OAuthError("invalid_request",
                         "redirect_uri is missing or not registered for this client")
    state = params.get("state")
    redirectable = _Redirectable(redirect_uri, state)
    if params.get("response_type") != "code":
        raise redirectable.error("unsupported_response_type", "response_type must be 'code'")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if not challenge:
        raise redirectable.error("invalid_request", "PKCE is required: send code_challenge "
                                 "with code_challenge_method=S256")
    if method != "S256":
        raise redirectable.error("invalid_request",
                                 "code_challenge_method must be S256 ('plain' is not accepted)")
    if not _CHALLENGE.match(challenge):
        raise redirectable.error("invalid_request",
                                 "code_challenge must be the base64url SHA-256 of the verifier")
    aud = params.get("aud")
    if aud is not None and aud.rstrip("/") not in (issuer, f"{issuer}/fhir"):
        raise redirectable.error("invalid_request", "aud does not name this server")
    try:
        scope = ScopeSet.parse(params.get("scope") or client.scope)
    except ScopeError as exc:
        raise redirectable.error("invalid_scope", str(exc)) from exc
    if not ScopeSet.parse(client.scope).covers(scope):
        raise redirectable.error("invalid_scope",
                                 "the requested scope exceeds what this client may ask for")
    if any(r.context == "system" for r in scope.resources):
        raise redirectable.error("invalid_scope",
                                 "system/ scopes are for the client credentials grant")
    return AuthorizationRequest(client=client, redirect_uri=redirect_uri, scope=scope,
                                state=state, code_challenge=challenge,
                                nonce=params.get("nonce"), aud=aud, params=dict(params))


@dataclass(frozen=True)
class _Redirectable:
    redirect_uri: str
    state: str | None

    def error(self, error: str, description: str) -> OAuthError:
        return OAuthError(error, description, redirect_uri=self.redirect_uri, state=self.state)


def create_authorization_code(session: Session, request: AuthorizationRequest, *, user: User,
                              org_id: str, patient_id: str | None) -> str:
    code = secrets.token_urlsafe(32)
    session.add(AuthorizationCode(
        code_hash=_digest(code), client_id=request.client.id, user_id=user.id, org_id=org_id,
        redirect_uri=request.redirect_uri, scope=str(request.scope),
        code_challenge=request.code_challenge, nonce=request.nonce, patient_id=patient_id,
        expires_at=utcnow() + CODE_LIFETIME))
    session.flush()
    return code


# --- the token endpoint ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None
    id_token: str | None = None
    patient: str | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"access_token": self.access_token, "token_type": "Bearer",
                               "expires_in": self.expires_in, "scope": self.scope}
        for name in ("refresh_token", "id_token", "patient"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out


@dataclass(frozen=True)
class Issuer:
    url: str
    secret: str


def exchange(session: Session, client: Client, form: Mapping[str, str],
             issuer: Issuer) -> TokenResponse:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type not in GRANT_TYPES:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    if grant_type not in client.grant_types:
        raise OAuthError("unauthorized_client", f"this client may not use {grant_type}")
    if grant_type == "client_credentials":
        return _client_credentials(session, client, form, issuer)
    if grant_type == "authorization_code":
        return _authorization_code(session, client, form, issuer)
    return _refresh(session, client, form, issuer)


def _requested_scope(form: Mapping[str, str], allowed: str) -> ScopeSet:
    try:
        requested = ScopeSet.parse(form.get("scope") or allowed)
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    if not ScopeSet.parse(allowed).covers(requested):
        raise OAuthError("invalid_scope", "the requested scope exceeds what was granted")
    return requested


def _client_credentials(session: Session, client: Client, form: Mapping[str, str],
                        issuer: Issuer) -> TokenResponse:
    if client.auth_method == "none":
        raise OAuthError("unauthorized_client", "a public client cannot use client credentials")
    scope = _requested_scope(form, client.scope)
    if any(r.context != "system" for r in scope.resources) or scope.other:
        raise OAuthError("invalid_scope", "client credentials tokens carry system/ scopes only")
    user = session.get(User, client.service_user_id) if client.service_user_id else None
    if user is None or not user.is_active:
        raise OAuthError("unauthorized_client", "this client has no active service account")
    issued = issue_access_token(session, issuer.secret, issuer=issuer.url, user_id=user.id,
                                org_id=client.org_id, client_id=client.id, scope=str(scope))
    return TokenResponse(issued.token, issued.expires_in, str(scope))


def _revoke_family(session: Session, family: str) -> None:
    now = utcnow()
    session.execute(update(RefreshToken).where(RefreshToken.family_id == family,
                                               RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now))
    session.execute(update(AuthToken).where(AuthToken.name == f"oauth2:{family}",
                                            AuthToken.revoked_at.is_(None))
                    .values(revoked_at=now))


def _member_of(user: User | None, org_id: str) -> bool:
    return user is not None and user.is_active and any(
        m.org_id == org_id for m in user.memberships)


def _issue_for_user(session: Session, client: Client, issuer: Issuer, *, user: User,
                    org_id: str, scope: ScopeSet, patient_id: str | None, family: str,
                    nonce: str | None, refresh_expires: Any = None,
                    with_id_token: bool = False) -> TokenResponse:
    access = issue_access_token(session, issuer.secret, issuer=issuer.url, user_id=user.id,
                                org_id=org_id, client_id=client.id, scope=str(scope),
                                patient_id=patient_id, family=family)
    refresh = None
    if "refresh_token" in client.grant_types and scope.other & {"offline_access",
                                                                  "online_access"}:
        refresh = secrets.token_urlsafe(32)
        lifetime = REFRESH_LIFETIME if "offline_access" in scope.other \
            else ONLINE_REFRESH_LIFETIME
        session.add(RefreshToken(token_hash=_digest(refresh), family_id=family,
                                 client_id=client.id, user_id=user.id, org_id=org_id,
                                 scope=str(scope), patient_id=patient_id,
                                 expires_at=refresh_expires or utcnow() + lifetime))
        session.flush()
    id_token = None
    if with_id_token and "openid" in scope.other:
        id_token = issue_id_token(session, issuer.secret, issuer=issuer.url, user=user,
                                  org_id=org_id, client_id=client.id, nonce=nonce,
                                  scope=str(scope))
    return TokenResponse(access.token, access.expires_in, str(scope), refresh, id_token,
                         patient_id if "launch/patient" in scope.other else None)


def _authorization_code(session: Session, client: Client, form: Mapping[str, str],
                        issuer: Issuer) -> TokenResponse:
    code = form.get("code")
    verifier = form.get("code_verifier")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    if not verifier:
        raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
    row = session.scalar(select(AuthorizationCode).where(
        AuthorizationCode.code_hash == _digest(code)))
    if row is None or row.client_id != client.id:
        raise OAuthError("invalid_grant", "unknown authorization code")
    now = utcnow()
    claimed = session.execute(update(AuthorizationCode).where(
        AuthorizationCode.id == row.id, AuthorizationCode.used_at.is_(None))
        .values(used_at=now).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        _revoke_family(session, row.family_id)
        raise OAuthError("invalid_grant", "this authorization code was already used; the "
                         "tokens issued from it are revoked")
    if row.expires_at <= now:
        raise OAuthError("invalid_grant", "the authorization code has expired")
    if form.get("redirect_uri") != row.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    if not _VERIFIER.match(verifier):
        raise OAuthError("invalid_grant", "code_verifier must be 43-128 unreserved characters")
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    if not hmac.compare_digest(expected, row.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    user = session.get(User, row.user_id)
    if not _member_of(user, row.org_id):
        raise OAuthError("invalid_grant", "the user who authorised this is no longer active")
    assert user is not None
    return _issue_for_user(session, client, issuer, user=user, org_id=row.org_id,
                           scope=ScopeSet.parse(row.scope), patient_id=row.patient_id,
                           family=row.family_id, nonce=row.nonce, with_id_token=True)


def _refresh(session: Session, client: Client, form: Mapping[str, str],
             issuer: Issuer) -> TokenResponse:
    presented = form.get("refresh_token")
    if not presented:
        raise OAuthError("invalid_request", "refresh_token is required")
    row = session.scalar(select(RefreshToken).where(
        RefreshToken.token_hash == _digest(presented)))
    if row is None or row.client_id != client.id:
        raise OAuthError("invalid_grant", "unknown refresh token")
    if row.revoked_at is not None:
        raise OAuthError("invalid_grant", "the refresh token has been revoked")
    now = utcnow()
    claimed = session.execute(update(RefreshToken).where(
        RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        _revoke_family(session, row.family_id)
        raise OAuthError("invalid_grant", "this refresh token was already used; every token "
                         "of its family is revoked")
    if row.expires_at <= now:
        raise OAuthError("invalid_grant", "the refresh token has expired")
    scope = _requested_scope(form, row.scope)
    user = session.get(User, row.user_id)
    if not _member_of(user, row.org_id):
        raise OAuthError("invalid_grant", "the user who authorised this is no longer active")
    assert user is not None
    # Keep the original absolute expiry: rotation renews the token, not the grant.
    return _issue_for_user(session, client, issuer, user=user, org_id=row.org_id,
                           scope=scope, patient_id=row.patient_id, family=row.family_id,
                           nonce=None, refresh_expires=row.expires_at)


# --- revocation and introspection -----------------------------------------------------------


def revoke(session: Session, client: Client, token: str) -> None:
    """RFC 7009: revoke a refresh token (and its family) or an access token of this client.

    Unknown tokens and tokens of other clients are ignored silently, as the RFC asks.
    """
    refresh = session.scalar(select(RefreshToken).where(
        RefreshToken.token_hash == _digest(token)))
    if refresh is not None:
        if refresh.client_id == client.id:
            _revoke_family(session, refresh.family_id)
        return
    row = session.scalar(select(AuthToken).where(AuthToken.token_hash == hash_token(token)))
    if row is not None and row.client_id == client.id and row.revoked_at is None:
        row.revoked_at = utcnow()


def introspect(session: Session, client: Client, token: str, *, issuer: str) -> dict[str, Any]:
    """RFC 7662: describe an active token of the client's organisation; otherwise inactive."""
    inactive = {"active": False}
    if is_jwt(token):
        try:
            principal = resolve_access_token(session, token, issuer=issuer)
        except TokenRejected:
            return inactive
        row = session.get(AuthToken, principal.token_id)
        if row is None or principal.org_id != client.org_id:
            return inactive
        out: dict[str, Any] = {
            "active": True, "token_type": "Bearer", "scope": row.scopes,
            "client_id": row.client_id, "username": principal.username,
            "sub": principal.user_id, "iss": issuer, "aud": issuer,
            "exp": int(row.expires_at.timestamp()), "iat": int(row.created_at.timestamp()),
            "org": row.org_id}
        if principal.patient_id:
            out["patient"] = principal.patient_id
        return out
    refresh = session.scalar(select(RefreshToken).where(
        RefreshToken.token_hash == _digest(token)))
    if refresh is not None and refresh.client_id == client.id and refresh.revoked_at is None \
            and refresh.used_at is None and refresh.expires_at > utcnow():
        return {"active": True, "token_type": "refresh_token", "scope": refresh.scope,
                "client_id": refresh.client_id, "sub": refresh.user_id,
                "exp": int(refresh.expires_at.timestamp()), "iss": issuer}
    return inactive


def patient_for(session: Session, user: User, org_id: str, chosen: str | None,
                request: AuthorizationRequest) -> str | None:
    """The launch patient: a patient user's own record; otherwise the one chosen on the page."""
    roles = {m.role for m in user.memberships if m.org_id == org_id}
    if Role.patient.value in roles:
        own = linked_patient(session, user.id, org_id)
        if request.wants_patient and own is None:
            raise OAuthError("access_denied", "your account is not linked to a patient record")
        return own
    if not request.wants_patient:
        return None
    if not chosen or len(chosen) > 64 or not chosen.isprintable():
        raise OAuthError("invalid_request", "choose the patient this app may see")
    return chosen

