"""The rotating set of keys that sign access and ID tokens (ES256).

A key signs new tokens for :data:`SIGN_FOR`, then retires; it stays in the published JWKS until
every token it signed has expired (:data:`PUBLISH_AFTER_RETIRE`, longer than any token's
lifetime), so rotation never invalidates a token in flight and needs no downtime. Private halves
are sealed with the settings' secret key (:mod:`careplane.security.sealing`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from careplane.platform.db import utcnow
from careplane.security.oauth_models import SigningKey
from careplane.security.sealing import SealError, seal, unseal

__all__ = ["PUBLISH_AFTER_RETIRE", "SIGNING_ALG", "SIGN_FOR", "current_key", "published",
           "rotate", "verification_key"]

log = logging.getLogger(__name__)

SIGNING_ALG = "ES256"
SIGN_FOR = timedelta(days=7)
PUBLISH_AFTER_RETIRE = timedelta(days=1)
_PURPOSE = "oauth signing key"


@dataclass(frozen=True)
class _Public:
    key: ECKey
    expires_at: datetime
    loaded_at: datetime


# A cached public key is re-read this often, so a key withdrawn early (rotation after a
# suspected compromise) stops verifying in every process within this time.
_RECHECK = timedelta(seconds=60)


_lock = threading.Lock()
_private: dict[str, ECKey] = {}
_public: dict[str, _Public] = {}


def _new(session: Session, secret: str, now: datetime) -> tuple[str, ECKey]:
    kid = secrets.token_urlsafe(12)
    key = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": SIGNING_ALG})
    retire_at = now + SIGN_FOR
    row = SigningKey(kid=kid, alg=SIGNING_ALG, public_jwk=dict(key.as_dict(private=False)),
                     private_sealed=seal(secret, _PURPOSE, key.as_pem(private=True)),
                     created_at=now, retire_at=retire_at,
                     expires_at=retire_at + PUBLISH_AFTER_RETIRE)
    session.add(row)
    session.flush()
    with _lock:
        _private[kid] = key
    return kid, key


def current_key(session: Session, secret: str) -> tuple[str, ECKey]:
    """The key to sign with now; makes the first one (or a successor) when needed."""
    now = utcnow()
    row = session.scalar(select(SigningKey).where(SigningKey.retire_at > now)
                         .order_by(SigningKey.created_at.desc()).limit(1))
    if row is None:
        return _new(session, secret, now)
    with _lock:
        cached = _private.get(row.kid)
    if cached is not None:
        return row.kid, cached
    try:
        pem = unseal(secret, _PURPOSE, row.private_sealed)
    except SealError:
        # The secret key changed: the old key can still verify (its public half is in clear)
        # but no longer sign, so retire it now and start a new one.
        log.warning("signing key %s cannot be unsealed with the current secret key; rotating",
                    row.kid)
        row.retire_at = now
        return _new(session, secret, now)
    key = ECKey.import_key(pem, {"kid": row.kid, "use": "sig", "alg": row.alg})
    with _lock:
        _private[row.kid] = key
    return row.kid, key


def rotate(session: Session, secret: str) -> str:
    """Start a new signing key at once; the previous ones stay published until they expire."""
    now = utcnow()
    for row in session.scalars(select(SigningKey).where(SigningKey.retire_at > now)):
        row.retire_at = now
        row.expires_at = now + PUBLISH_AFTER_RETIRE
    session.execute(delete(SigningKey).where(SigningKey.expires_at <= now))
    kid, _key = _new(session, secret, now)
    return kid


def published(session: Session) -> list[dict[str, Any]]:
    """Public JWKs of every key whose tokens may still be in use (the ``/oauth2/jwks`` body)."""
    rows = session.scalars(select(SigningKey).where(SigningKey.expires_at > utcnow())
                           .order_by(SigningKey.created_at.desc()))
    return [dict(row.public_jwk) for row in rows]


def verification_key(session: Session, kid: str) -> ECKey | None:
    """The public key with this ``kid``, if it is still published."""
    now = utcnow()
    with _lock:
        cached = _public.get(kid)
    if cached is None or now - cached.loaded_at > _RECHECK:
        row = session.get(SigningKey, kid)
        if row is None:
            with _lock:
                _public.pop(kid, None)
            return None
        cached = _Public(ECKey.import_key(dict(row.public_jwk)), row.expires_at, now)
        with _lock:
            _public[kid] = cached
    if cached.expires_at <= now:
        return None
    return cached.key
