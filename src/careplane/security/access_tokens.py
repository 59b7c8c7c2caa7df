"""Signed JWT access tokens (RFC 9068 profile) and OpenID Connect ID tokens.

A JWT access token is checked without trusting anything it says until its signature verifies
against a key of our own published set: issuer first (a token from another issuer is refused
before any key lookup), then signature, then audience, expiry and not-before, then its row in
``auth_token`` (revoked or unknown ``jti`` → refused) and finally the user's current
memberships (roles are never taken from the token, so removing a role takes effect at once).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.platform.db import new_id, utcnow
from careplane.security._principal import Principal, Role
from careplane.security.identity import hash_token, load_token
from careplane.security.keys import SIGNING_ALG, current_key, verification_key
from careplane.security.models import AuthToken, User
from careplane.security.oauth_models import UserPatient

__all__ = ["ACCESS_TOKEN_LIFETIME", "IssuedAccessToken", "TokenRejected", "access_token_id",
           "is_jwt", "issue_access_token", "issue_id_token", "linked_patient",
           "resolve_access_token"]

ACCESS_TOKEN_LIFETIME = timedelta(hours=1)
ID_TOKEN_LIFETIME = timedelta(hours=1)
_LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf/iat


class TokenRejected(ValueError):
    """The presented token is not acceptable; the message says why (safe to show the caller)."""


@dataclass(frozen=True)
class IssuedAccessToken:
    token: str
    jti: str
    expires_in: int
    expires_at: datetime


def is_jwt(token: str) -> bool:
    return token.count(".") == 2


def linked_patient(session: Session, user_id: str, org_id: str) -> str | None:
    return session.scalar(select(UserPatient.patient_id).where(
        UserPatient.user_id == user_id, UserPatient.org_id == org_id))


def issue_access_token(session: Session, secret: str, *, issuer: str, user_id: str,
                       org_id: str, client_id: str, scope: str,
                       patient_id: str | None = None, family: str | None = None,
                       lifetime: timedelta = ACCESS_TOKEN_LIFETIME) -> IssuedAccessToken:
    kid, key = current_key(session, secret)
    now = utcnow()
    expires_at = now + lifetime
    jti = new_id()
    claims: dict[str, Any] = {
        "iss": issuer, "sub": user_id, "aud": issuer, "client_id": client_id,
        "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
        "exp": int(expires_at.timestamp()), "jti": jti, "scope": scope, "org": org_id}
    if patient_id:
        claims["patient"] = patient_id
    token = jwt.encode({"alg": SIGNING_ALG, "kid": kid, "typ": "at+jwt"}, claims, key)
    session.add(AuthToken(id=jti, token_hash=hash_token(token), kind="access", user_id=user_id,
                          org_id=org_id, client_id=client_id, scopes=scope,
                          name=f"oauth2:{family}" if family else "oauth2",
                          expires_at=expires_at))
    session.flush()
    return IssuedAccessToken(token, jti, int(lifetime.total_seconds()), expires_at)


def issue_id_token(session: Session, secret: str, *, issuer: str, user: User, org_id: str,
                   client_id: str, nonce: str | None, scope: str) -> str:
    kid, key = current_key(session, secret)
    now = utcnow()
    claims: dict[str, Any] = {
        "iss": issuer, "sub": user.id, "aud": client_id, "iat": int(now.timestamp()),
        "exp": int((now + ID_TOKEN_LIFETIME).timestamp()), "auth_time": int(now.timestamp())}
    if nonce:
        claims["nonce"] = nonce
    granted = set(scope.split())
    if "profile" in granted:
        claims["name"] = user.full_name or user.username
        claims["preferred_username"] = user.username
    if "fhirUser" in granted:
        own = linked_patient(session, user.id, org_id)
        if own:
            claims["fhirUser"] = f"{issuer}/fhir/Patient/{own}"
    return jwt.encode({"alg": SIGNING_ALG, "kid": kid, "typ": "JWT"}, claims, key)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise TokenRejected("the token is not a well-formed JWT") from exc
    if not isinstance(claims, dict):
        raise TokenRejected("the token is not a well-formed JWT")
    return dict(compact.headers()), claims


# Tokens whose signature has verified, with their key id and claims: a token is presented on
# every request of its hour, and checking an ES256 signature costs more than the rest of
# authentication. Only the signature check is skipped for a cached token; its key must still
# be published, and its claims, its row (revocation) and its account are checked every time.
_VERIFIED_MAX = 4096
_verified: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
_verified_lock = threading.Lock()


def _verified_claims(session: Session, token: str, issuer: str) -> dict[str, Any]:
    with _verified_lock:
        cached = _verified.get(token)
    if cached is not None:
        cached_kid, claims = cached
        if claims.get("iss") != issuer:
            raise TokenRejected("the token was issued by an unknown issuer")
        if verification_key(session, cached_kid) is None:
            raise TokenRejected("the token is signed with an unknown or expired key")
        return claims
    header, unverified = _unverified(token)
    if unverified.get("iss") != issuer:
        raise TokenRejected("the token was issued by an unknown issuer")
    kid = header.get("kid")
    key = verification_key(session, kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected("the token is signed with an unknown or expired key")
    if header.get("typ") not in ("at+jwt", "application/at+jwt"):
        raise TokenRejected("the token is not an access token")
    try:
        claims = jwt.decode(token, key, algorithms=[SIGNING_ALG]).claims
    except (JoseError, ValueError) as exc:
        raise TokenRejected("the token's signature does not verify") from exc
    assert isinstance(kid, str)
    with _verified_lock:
        _verified[token] = (kid, claims)
        while len(_verified) > _VERIFIED_MAX:
            _verified.popitem(last=False)
    return claims


def access_token_id(session: Session, token: str, *, issuer: str) -> str | None:
    """The ``jti`` of a JWT access token whose signature verifies, or None: what a caller
    reading the token's row ahead (:func:`identity.token_query` by id) looks it up by.
    Nothing else is checked here; :func:`resolve_access_token` still decides."""
    try:
        jti = _verified_claims(session, token, issuer).get("jti")
    except TokenRejected:
        return None
    return jti if isinstance(jti, str) else None


def resolve_access_token(session: Session, token: str, *, issuer: str,
                         audience: str | None = None) -> Principal:
    """The principal a JWT access token stands for; :class:`TokenRejected` says why not."""
    claims = _verified_claims(session, token, issuer)
    registry = jwt.JWTClaimsRegistry(
        leeway=_LEEWAY, iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience or issuer},
        exp={"essential": True}, sub={"essential": True}, jti={"essential": True})
    try:
        registry.validate(claims)
    except JoseError as exc:
        if exc.error == "expired_token":
            raise TokenRejected("the token has expired") from exc
        if "aud" in str(exc):
            raise TokenRejected("the token is meant for another audience") from exc
        raise TokenRejected(f"the token's claims are not acceptable ({exc.error})") from exc
    holder = load_token(session, "id", str(claims["jti"]))
    now = utcnow()
    if holder is None or holder.kind != "access" or holder.user_id != claims["sub"]:
        raise TokenRejected("the token is unknown")
    if holder.revoked_at is not None:
        raise TokenRejected("the token has been revoked")
    if holder.expires_at <= now - timedelta(seconds=_LEEWAY):
        raise TokenRejected("the token has expired")
    if not holder.is_active:
        raise TokenRejected("the token's account is disabled")
    if not holder.roles:
        raise TokenRejected("the token's account no longer belongs to its organisation")
    patient = claims.get("patient")
    if Role.patient in holder.roles:
        # A patient's own record is the link on their account, whatever the token claims.
        patient = holder.own_patient
    return Principal(user_id=holder.user_id, username=holder.username, org_id=holder.org_id,
                     roles=holder.roles, token_id=holder.token_id,
                     scopes=frozenset(holder.scopes.split()),
                     display_name=holder.display_name, client_id=holder.client_id,
                     patient_id=patient if isinstance(patient, str) else None)
