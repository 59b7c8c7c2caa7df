"""Trusting an external OpenID Connect provider (Keycloak, Entra ID, ...) beside careplane's own.

When ``CAREPLANE_OIDC_ISSUER`` (with its JWKS URL, audience and organisation) is set, a bearer
JWT whose ``iss`` is that issuer is verified here instead of against careplane's own keys:

1. the header must name an asymmetric algorithm (RS*, PS*, ES*, EdDSA: never ``none`` or a
   shared-secret HS*) and a key of the provider's JWKS, which is fetched from the configured
   URL on first use, kept for an hour, and fetched again at most every 30 seconds when a token
   names a key it does not hold (the provider rotated its keys);
2. the signature must verify with that key; then ``iss`` must be the issuer, ``aud`` must
   name the configured audience, ``exp`` must lie ahead and ``nbf``/``iat`` not ahead (30 s of
   clock skew tolerated);
3. the roles claim (a dotted path, e.g. ``realm_access.roles``; a list or a space-separated
   string) is mapped to careplane roles through ``CAREPLANE_OIDC_ROLE_MAP``; a token that
   maps to no careplane role is refused;
4. the user is the careplane account named by the username claim in the configured
   organisation, made on first sight without a local password. An account that has a local
   password is never taken over by a provider's user of the same name. The account's roles
   in that organisation follow the token's.

A token from any other issuer goes to careplane's own verification, which refuses unknown
issuers. The JWKS is read through ``fetch`` (``httpx`` by default), so tests serve it
in-process and nothing here needs the network at test time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from careplane.security._principal import Principal, Role
from careplane.security.access_tokens import TokenRejected
from careplane.security.models import Membership, Organisation, User
from careplane.settings import Settings, SettingsError

__all__ = ["ALGORITHMS", "ExternalProvider", "Fetch", "external_provider", "fetch_url"]

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
Fetch = Callable[[str], bytes]
_LEEWAY = 30
_KEYS_TTL = 3600.0
_REFETCH_EVERY = 30.0
_MAX_JWKS_BYTES = 256 * 1024


def fetch_url(url: str) -> bytes:
    """GET ``url`` (the provider's JWKS), refusing redirects and oversized answers."""
    import httpx

    response = httpx.get(url, timeout=5.0, follow_redirects=False,
                         headers={"Accept": "application/json"})
    response.raise_for_status()
    if len(response.content) > _MAX_JWKS_BYTES:
        raise ValueError("the JWKS document is too large")
    return response.content


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims of a compact JWT, unverified (to route it); None if malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, UnicodeError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass
class _Keys:
    keys: KeySet
    kids: frozenset[str]
    fetched_at: float


class ExternalProvider:
    """Verifies one external provider's access tokens and maps them to careplane principals."""

    def __init__(self, settings: Settings, fetch: Fetch = fetch_url,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (settings.oidc_issuer and settings.oidc_jwks_url and settings.oidc_audience
                and settings.oidc_org):
            raise SettingsError("the external OIDC provider is not configured")
        url = urlsplit(settings.oidc_jwks_url)
        local = url.hostname in ("localhost", "127.0.0.1", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and local):
            raise SettingsError("oidc_jwks_url must be an https:// URL (http only on "
                                "localhost)")
        unknown = sorted(v for v in settings.oidc_role_map.values()
                         if v not in Role.__members__)
        if unknown:
            raise SettingsError(f"oidc_role_map maps to {unknown[0]!r}, which is not a "
                                f"careplane role ({', '.join(Role.__members__)})")
        self.issuer = settings.oidc_issuer
        self.jwks_url = settings.oidc_jwks_url
        self.audience = settings.oidc_audience
        self.org_slug = settings.oidc_org
        self.username_claim = settings.oidc_username_claim
        self.roles_claim = settings.oidc_roles_claim
        self.role_map = {k: Role(v) for k, v in settings.oidc_role_map.items()}
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: _Keys | None = None
        self._org_id: str | None = None

    # -- routing and keys ----------------------------------------------------------------

    def issued(self, token: str) -> bool:
        """Whether ``token`` claims to come from this provider (nothing verified yet)."""
        peeked = _peek(token)
        return peeked is not None and peeked[1].get("iss") == self.issuer

    def _load(self) -> _Keys:
        try:
            document = json.loads(self._fetch(self.jwks_url))
            keys = KeySet.import_key_set(document)
        except Exception as exc:  # unreachable, not JSON, not a JWKS: all mean "no keys"
            raise TokenRejected("the identity provider's keys cannot be fetched; try again "
                                "shortly") from exc
        kids = frozenset(str(k.kid) for k in keys.keys if k.kid)
        return _Keys(keys, kids, self._clock())

    def key_set(self, kid: str | None) -> KeySet:
        """The provider's keys, fetched on first use, after an hour, or when ``kid`` is new
        (at most every 30 seconds, so unknown key ids cannot make us hammer the provider)."""
        with self._lock:
            now = self._clock()
            current = self._keys
            stale = current is None or now - current.fetched_at > _KEYS_TTL
            unknown = current is not None and kid is not None and kid not in current.kids \
                and now - current.fetched_at > _REFETCH_EVERY
            if stale or unknown:
                try:
                    self._keys = current = self._load()
                except TokenRejected:
                    if current is None:
                        raise
            assert current is not None
            return current.keys

    # -- verification --------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token of this provider; :class:`TokenRejected` says why not."""
        peeked = _peek(token)
        if peeked is None:
            raise TokenRejected("the token is not a well-formed JWT")
        header, _ = peeked
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejected(f"the identity provider's token uses the algorithm {alg!r}, "
                                "which is not accepted")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        keys = self.key_set(kid)
        try:
            claims = jwt.decode(token, keys, algorithms=[str(alg)]).claims
        except (JoseError, ValueError) as exc:
            raise TokenRejected("the token's signature does not verify with the identity "
                                "provider's keys") from exc
        registry = jwt.JWTClaimsRegistry(
            leeway=_LEEWAY, iss={"essential": True, "value": self.issuer},
            exp={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise TokenRejected(f"the token is not valid: {exc.error}") from exc
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.audience not in audiences:
            raise TokenRejected("the token is meant for another audience")
        return claims

    def roles_of(self, claims: dict[str, Any]) -> frozenset[Role]:
        raw = _claim(claims, self.roles_claim)
        names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        return frozenset(self.role_map[n] for n in names
                         if isinstance(n, str) and n in self.role_map)

    # -- the careplane side --------------------------------------------------------------

    def _org(self, session: Session) -> str:
        if self._org_id is None:
            org_id = session.scalar(select(Organisation.id).where(
                Organisation.slug == self.org_slug))
            if org_id is None:
                raise TokenRejected(f"the organisation {self.org_slug!r} of the identity "
                                    "provider's users does not exist")
            self._org_id = org_id
        return self._org_id

    def _account(self, session: Session, username: str, org_id: str, roles: frozenset[Role],
                 claims: dict[str, Any]) -> User:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            user = User(username=username, password_hash=None,
                        full_name=str(claims.get("name") or "")[:200],
                        email=str(claims["email"])[:254] if claims.get("email") else None)
            session.add(user)
            try:
                session.flush()
            except IntegrityError:  # made by a concurrent first request
                session.rollback()
                user = session.scalar(select(User).where(User.username == username))
                if user is None:
                    raise TokenRejected("the account could not be made; try again") from None
        elif user.password_hash:
            raise TokenRejected(f"the identity provider's user {username!r} has the name of a "
                                "local careplane account, which it cannot use")
        if not user.is_active:
            raise TokenRejected("this account is disabled")
        held = {Role(m.role) for m in user.memberships if m.org_id == org_id}
        if held != roles:
            for membership in [m for m in user.memberships if m.org_id == org_id]:
                user.memberships.remove(membership)
            session.flush()
            user.memberships.extend(Membership(user_id=user.id, org_id=org_id, role=r.value)
                                    for r in sorted(roles))
            session.flush()
        session.commit()
        return user

    def resolve(self, session: Session, token: str) -> Principal:
        """The careplane principal of a valid token of this provider."""
        claims = self.verify(token)
        username = _claim(claims, self.username_claim) or claims.get("sub")
        if not isinstance(username, str) or not 0 < len(username) <= 150 \
                or not username.isprintable() or " " in username:
            raise TokenRejected(f"the token has no usable {self.username_claim!r} claim")
        roles = self.roles_of(claims)
        if not roles:
            raise TokenRejected("the token's roles give no careplane role")
        org_id = self._org(session)
        user = self._account(session, username, org_id, roles, claims)
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        smart = any("/" in s for s in scopes)
        client = claims.get("azp") or claims.get("client_id")
        jti = claims.get("jti")
        token_id = f"oidc:{jti}" if isinstance(jti, str) and len(jti) <= 64 else \
            "oidc:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        return Principal(
            user_id=user.id, username=username, org_id=org_id, roles=roles,
            token_id=token_id, scopes=scopes if smart else frozenset(),
            display_name=user.full_name or username,
            # SMART scopes in the token narrow the roles, as for careplane's own clients.
            client_id=(str(client) if client else self.issuer) if smart else None)


def external_provider(settings: Settings, fetch: Fetch = fetch_url) -> ExternalProvider | None:
    """The external provider these settings trust, or None; a bad configuration raises
    :class:`SettingsError` (at start, when the application is made)."""
    if not settings.oidc_issuer:
        return None
    return ExternalProvider(settings, fetch)
