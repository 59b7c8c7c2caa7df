"""Identity services: organisations, users, password checks, lockout, rehash, tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import select

from careplane.platform.db import Database, utcnow
from careplane.security import Role
from careplane.security.identity import (
    MAX_FAILED_LOGINS,
    IdentityError,
    authenticate,
    create_org,
    create_user,
    issue_token,
    resolve_token,
    revoke_token,
)
from careplane.security.models import AuthToken, User


def _user(db: Database, username: str = "ana", password: str = "correct-horse") -> str:
    with db.session() as session:
        org = create_org(session, "org-a", "Org A")
        return create_user(session, username, password, org=org, roles=[Role.clinician]).id


def test_org_slug_is_validated_and_unique(db: Database) -> None:
    with db.session() as session:
        with pytest.raises(IdentityError, match="lower-case"):
            create_org(session, "Bad Slug", "x")
        create_org(session, "good-slug", "Good")
        with pytest.raises(IdentityError, match="already exists"):
            create_org(session, "good-slug", "Again")


def test_password_is_stored_as_argon2id_and_checked(db: Database,
                                                    real_password_hashing: None) -> None:
    user_id = _user(db)
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None and user.password_hash is not None
        assert user.password_hash.startswith("$argon2id$")
        assert "correct-horse" not in user.password_hash
        assert authenticate(session, "ana", "correct-horse") is not None
        assert authenticate(session, "ana", "wrong-password") is None
        assert authenticate(session, "nobody", "correct-horse") is None


def test_weak_inputs_are_refused(db: Database) -> None:
    with db.session() as session:
        org = create_org(session, "org-a", "Org A")
        with pytest.raises(IdentityError, match="at least 12 characters"):
            create_user(session, "bob", "short", org=org, roles=[Role.clinician])
        with pytest.raises(IdentityError, match=r"at least 12 characters long \(this one has 11\)"):
            create_user(session, "bob", "elevenchars", org=org, roles=[Role.clinician])
        with pytest.raises(IdentityError, match="without spaces"):
            create_user(session, "bo b", "long-enough-now", org=org, roles=[Role.clinician])
        with pytest.raises(IdentityError, match="at least one role"):
            create_user(session, "bob", "long-enough-now", org=org, roles=[])
        assert create_user(session, "bob", "twelve chars", org=org, roles=[Role.clinician])


def test_account_locks_after_repeated_failures_and_unlocks_later(db: Database) -> None:
    _user(db)
    for _ in range(MAX_FAILED_LOGINS):
        with db.session() as session:
            assert authenticate(session, "ana", "wrong-password") is None
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == "ana"))
        assert user is not None and user.locked_until is not None
        # Locked: even the right password is refused.
        assert authenticate(session, "ana", "correct-horse") is None
        user.locked_until = utcnow() - timedelta(seconds=1)
    with db.session() as session:
        assert authenticate(session, "ana", "correct-horse") is not None


def test_successful_login_resets_the_failure_count(db: Database) -> None:
    _user(db)
    with db.session() as session:
        for _ in range(MAX_FAILED_LOGINS - 1):
            authenticate(session, "ana", "wrong-password")
        assert authenticate(session, "ana", "correct-horse") is not None
        user = session.scalar(select(User).where(User.username == "ana"))
        assert user is not None and user.failed_logins == 0 and user.locked_until is None


def test_outdated_hash_parameters_are_upgraded_on_login(db: Database,
                                                       real_password_hashing: None) -> None:
    user_id = _user(db)
    weak = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1),))
    old_hash = weak.hash("correct-horse")
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        user.password_hash = old_hash
    with db.session() as session:
        assert authenticate(session, "ana", "correct-horse") is not None
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None and user.password_hash != old_hash
        assert "m=8192" not in (user.password_hash or "")
        assert authenticate(session, "ana", "correct-horse") is not None


def test_token_resolves_until_expired_or_revoked(db: Database) -> None:
    user_id = _user(db)
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        issued = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=1))
    with db.session() as session:
        principal = resolve_token(session, issued.token, kind="bearer")
        assert principal is not None and principal.username == "ana"
        assert Role.clinician in principal.roles
        # A bearer token is not a session cookie and the other way round.
        assert resolve_token(session, issued.token, kind="session") is None
        row = session.scalar(select(AuthToken).where(AuthToken.id == issued.token_id))
        assert row is not None and issued.token not in row.token_hash
        row.expires_at = utcnow() - timedelta(seconds=1)
    with db.session() as session:
        assert resolve_token(session, issued.token, kind="bearer") is None
        user = session.get(User, user_id)
        assert user is not None
        other = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=1))
        revoke_token(session, other.token_id)
    with db.session() as session:
        assert resolve_token(session, other.token, kind="bearer") is None


def test_inactive_user_tokens_stop_working(db: Database) -> None:
    user_id = _user(db)
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        issued = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=1))
        user.is_active = False
    with db.session() as session:
        assert resolve_token(session, issued.token, kind="bearer") is None
        assert authenticate(session, "ana", "correct-horse") is None
