"""The signing key set: sealed at rest, rotated without invalidating tokens in flight."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from careplane.platform.db import Database, utcnow
from careplane.security import keys
from careplane.security.oauth_models import SigningKey
from careplane.security.sealing import SealError, seal, unseal

SECRET = "a-test-secret-key-that-is-long-enough-000"


def test_sealing_round_trips_and_refuses_another_secret() -> None:
    sealed = seal(SECRET, "purpose", b"private bytes")
    assert b"private bytes" not in sealed.encode()
    assert unseal(SECRET, "purpose", sealed) == b"private bytes"
    with pytest.raises(SealError):
        unseal("another-secret-key-also-long-enough-0000", "purpose", sealed)
    with pytest.raises(SealError):
        unseal(SECRET, "another purpose", sealed)
    with pytest.raises(SealError):
        unseal(SECRET, "purpose", "garbage")


def test_first_key_is_made_on_demand_and_stored_sealed(db: Database) -> None:
    with db.session() as session:
        kid, _key = keys.current_key(session, SECRET)
        again, _ = keys.current_key(session, SECRET)
        assert again == kid
        row = session.get(SigningKey, kid)
        assert row is not None and row.alg == "ES256"
        assert "PRIVATE" not in row.private_sealed
        assert "d" not in row.public_jwk  # the private scalar is never in clear
        assert [k["kid"] for k in keys.published(session)] == [kid]


def test_rotation_keeps_old_key_published_until_it_expires(db: Database) -> None:
    with db.session() as session:
        old, _ = keys.current_key(session, SECRET)
        new = keys.rotate(session, SECRET)
        assert keys.current_key(session, SECRET)[0] == new
        assert {k["kid"] for k in keys.published(session)} == {old, new}
        assert keys.verification_key(session, old) is not None
        row = session.get(SigningKey, old)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    with db.session() as session:
        assert {k["kid"] for k in keys.published(session)} == {new}


def test_a_changed_secret_key_starts_a_new_signing_key(db: Database) -> None:
    with db.session() as session:
        row = SigningKey(kid="stale", alg="ES256", public_jwk={"kty": "EC"},
                         private_sealed=seal("some-other-secret-key-0000000000000", "x", b"x"),
                         retire_at=utcnow() + timedelta(days=1),
                         expires_at=utcnow() + timedelta(days=2))
        session.add(row)
        session.flush()
        kid, _ = keys.current_key(session, SECRET)
        assert kid != "stale"
        stale = session.scalar(select(SigningKey).where(SigningKey.kid == "stale"))
        assert stale is not None and stale.retire_at <= utcnow()
