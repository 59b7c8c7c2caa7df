"""Organisations, users and tokens: the service functions the CLI, the API and the web call."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Select, String, bindparam, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from careplane.platform.db import MISSING, recall, remember, utcnow
from careplane.security._principal import Principal, Role
from careplane.security.models import AuthToken, Membership, Organisation, User
from careplane.security.oauth_models import RefreshToken, UserPatient
from careplane.security.passwords import hash_password, password_problem, verify_password
from careplane.security.totp import is_enrolled, verify_code

__all__ = ["TOKEN_COLUMNS", "IdentityError", "IssuedToken", "LoginResult", "WrongPassword",
           "add_membership", "authenticate", "change_password", "check_login", "create_org",
           "create_user", "holder_of", "issue_token", "link_patient", "remember_token",
           "resolve_token", "revoke_token", "revoke_user_tokens", "token_query"]

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class IdentityError(ValueError):
    """A request about identities that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_org(session: Session, slug: str, name: str) -> Organisation:
    if not _SLUG.match(slug):
        raise IdentityError(
            f"organisation slug {slug!r} must be lower-case letters, digits and '-'")
    if session.scalar(select(Organisation).where(Organisation.slug == slug)):
        raise IdentityError(f"organisation {slug!r} already exists")
    org = Organisation(slug=slug, name=name)
    session.add(org)
    session.flush()
    return org


def get_org(session: Session, slug: str) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.slug == slug))
    if org is None:
        raise IdentityError(f"no organisation {slug!r}")
    return org


def create_user(session: Session, username: str, password: str, *, org: Organisation,
                roles: list[Role], full_name: str = "", email: str | None = None) -> User:
    if not username or len(username) > 150 or not username.isprintable() or " " in username:
        raise IdentityError("username must be 1-150 printable characters without spaces")
    problem = password_problem(password, username=username)
    if problem is not None:
        raise IdentityError(problem)
    if not roles:
        raise IdentityError("a user needs at least one role")
    if session.scalar(select(User).where(User.username == username)):
        raise IdentityError(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password),
                full_name=full_name, email=email)
    session.add(user)
    session.flush()
    for role in roles:
        add_membership(session, user, org, role)
    return user


class WrongPassword(IdentityError):
    """The current password given to prove who is asking is wrong (counted as a failure)."""


def change_password(session: Session, user: User, current: str, new: str, *,
                    keep_token_id: str | None = None) -> int:
    """Replace a user's password: the current one must be right and the new one must meet
    the password policy (:mod:`careplane.security.passwords`) and differ from it.

    A wrong current password counts toward the lockout like a failed sign-in (the caller
    commits that count: :class:`WrongPassword` is raised after it is made), and a locked
    account cannot change its password, so a stolen token cannot be used to guess it. On
    success every other token and web session of the user is revoked, and their OAuth
    refresh tokens with them (whoever knew the old password is signed out everywhere);
    ``keep_token_id``, the token of the request, stays valid. Returns how many were revoked.
    """
    now = utcnow()
    if user.locked_until and user.locked_until > now:
        raise WrongPassword("too many wrong passwords: the account is locked for a while")
    if not verify_password(current, user.password_hash)[0]:
        _count_failure(user, now)
        session.flush()
        raise WrongPassword("the current password is wrong")
    problem = password_problem(new, username=user.username)
    if problem is not None:
        raise IdentityError(problem)
    if new == current:
        raise IdentityError("the new password must differ from the current one")
    user.password_hash = hash_password(new)
    user.failed_logins = 0
    revoked = revoke_user_tokens(session, user.id, keep_token_id=keep_token_id, when=now)
    session.flush()
    return revoked


def revoke_user_tokens(session: Session, user_id: str, *, keep_token_id: str | None = None,
                       when: datetime | None = None) -> int:
    """Revoke every live token, web session and refresh token of a user but one."""
    when = when or utcnow()
    tokens = update(AuthToken).where(AuthToken.user_id == user_id,
                                     AuthToken.revoked_at.is_(None))
    if keep_token_id is not None:
        tokens = tokens.where(AuthToken.id != keep_token_id)
    revoked = session.execute(tokens.values(revoked_at=when))
    refresh = session.execute(update(RefreshToken).where(
        RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=when))
    return int(getattr(revoked, "rowcount", 0) or 0) + int(getattr(refresh, "rowcount", 0) or 0)


def _count_failure(user: User, now: datetime) -> None:
    user.failed_logins += 1
    if user.failed_logins >= MAX_FAILED_LOGINS:
        user.locked_until = now + LOCKOUT
        user.failed_logins = 0


def add_membership(session: Session, user: User, org: Organisation, role: Role) -> Membership:
    membership = Membership(user_id=user.id, org_id=org.id, role=Role(role).value)
    session.add(membership)
    session.flush()
    return membership


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    # The password was right but the account has a second factor and no code came with it.
    needs_code: bool = False


def check_login(session: Session, username: str, password: str, *, totp: str | None = None,
                secret_key: str | None = None) -> LoginResult:
    """Check a password (and the one-time code of an account that has one).

    Failures are counted and lock the account for a while after too many; a missing code is
    not a failure (a sign-in form asks for it next), a wrong one is.
    """
    user = session.scalar(select(User).where(User.username == username))
    now = utcnow()
    if user is None or not user.is_active:
        verify_password(password, None)
        return LoginResult(None)
    if user.locked_until and user.locked_until > now:
        verify_password(password, None)
        return LoginResult(None)
    ok, new_hash = verify_password(password, user.password_hash)
    if ok and is_enrolled(session, user.id):
        if totp is None:
            return LoginResult(None, needs_code=True)
        ok = verify_code(session, user.id, totp, secret_key)
    if not ok:
        _count_failure(user, now)
        return LoginResult(None)
    user.failed_logins = 0
    user.locked_until = None
    if new_hash:
        user.password_hash = new_hash
    return LoginResult(user)


def authenticate(session: Session, username: str, password: str, *, totp: str | None = None,
                 secret_key: str | None = None) -> User | None:
    """The user if the password (and, where set up, the one-time code) is right."""
    return check_login(session, username, password, totp=totp, secret_key=secret_key).user


def issue_token(session: Session, user: User, *, kind: str, lifetime: timedelta,
                org_id: str | None = None, name: str = "", scopes: str = "") -> IssuedToken:
    if kind not in ("session", "bearer"):
        raise IdentityError(f"unknown token kind {kind!r}")
    orgs = {m.org_id for m in user.memberships}
    if org_id is None:
        if not orgs:
            raise IdentityError(f"user {user.username!r} belongs to no organisation")
        org_id = sorted(orgs)[0]
    elif org_id not in orgs:
        raise IdentityError(f"user {user.username!r} is not a member of that organisation")
    token = secrets.token_urlsafe(32)
    row = AuthToken(token_hash=hash_token(token), kind=kind, user_id=user.id, org_id=org_id,
                    name=name, scopes=scopes, expires_at=utcnow() + lifetime)
    session.add(row)
    session.flush()
    return IssuedToken(token=token, token_id=row.id, expires_at=row.expires_at)


@dataclass(frozen=True)
class TokenHolder:
    """A token row with its user and the user's roles in the token's organisation."""

    token_id: str
    kind: str
    org_id: str
    scopes: str
    client_id: str | None
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_id: str
    username: str
    display_name: str
    is_active: bool
    roles: frozenset[Role]
    # The Patient linked to the account in the token's organisation (role ``patient``).
    own_patient: str | None = None


class _JoinedRoles(FunctionElement[str]):
    """A group's roles, comma-separated. SQLAlchemy's ``aggregate_strings`` would pass the
    separator as a parameter rendered into the SQL on every execution, which costs the
    hottest statement of all (every authenticated request runs it) more than it takes to
    run; the separator here is part of the statement."""

    type = String()
    inherit_cache = True
    name = "joined_roles"


@compiles(_JoinedRoles)
def _joined_roles(element: _JoinedRoles, compiler: SQLCompiler, **kw: Any) -> str:
    return f"group_concat({compiler.process(element.clauses, **kw)}, ',')"


@compiles(_JoinedRoles, "postgresql")
def _joined_roles_pg(element: _JoinedRoles, compiler: SQLCompiler, **kw: Any) -> str:
    return f"string_agg({compiler.process(element.clauses, **kw)}, ',')"


def _token_query(key: InstrumentedAttribute[str]) -> Select[*tuple[Any, ...]]:
    # One row per token: the roles come aggregated (comma-separated), so that a statement
    # which joins this to other rows (a FHIR read's, see records.store) does not repeat
    # them once per role.
    columns = (AuthToken.id, AuthToken.kind, AuthToken.org_id, AuthToken.scopes,
               AuthToken.client_id, AuthToken.expires_at, AuthToken.revoked_at,
               AuthToken.last_used_at, User.id, User.username, User.full_name, User.is_active,
               UserPatient.patient_id)
    return (select(*columns, _JoinedRoles(Membership.role).label("roles"))
            .join(User, User.id == AuthToken.user_id)
            .outerjoin(Membership, (Membership.user_id == AuthToken.user_id)
                       & (Membership.org_id == AuthToken.org_id))
            .outerjoin(UserPatient, (UserPatient.user_id == AuthToken.user_id)
                       & (UserPatient.org_id == AuthToken.org_id))
            .where(key == bindparam("key"))
            .group_by(*columns))


# Built once: this runs on every authenticated request.
_BY = {"hash": _token_query(AuthToken.token_hash), "id": _token_query(AuthToken.id)}
TOKEN_COLUMNS = len(_BY["hash"].selected_columns)
"""How many columns :func:`token_query` selects (a joined statement's first ones)."""


def token_query(by: Literal["hash", "id"]) -> Select[*tuple[Any, ...]]:
    """The statement :func:`load_token` runs (parameter ``key``), for a caller that reads it
    together with other rows and hands the answer back through :func:`remember_token`."""
    return _BY[by]


def holder_of(values: Sequence[Any]) -> TokenHolder:
    """The :class:`TokenHolder` of one row of :func:`token_query` (its first columns)."""
    return TokenHolder(
        token_id=values[0], kind=values[1], org_id=values[2], scopes=values[3],
        client_id=values[4], expires_at=values[5], revoked_at=values[6],
        last_used_at=values[7], user_id=values[8], username=values[9],
        display_name=values[10] or values[9], is_active=values[11],
        roles=frozenset(Role(r) for r in values[13].split(",")) if values[13] else frozenset(),
        own_patient=values[12])


def remember_token(session: Session, by: Literal["hash", "id"], key: str,
                   holder: TokenHolder | None) -> None:
    """Hand :func:`load_token` the answer to (``by``, ``key``) read ahead (None: no such
    token), so that it costs no query of its own."""
    remember(session, ("token", by, key), holder)


def load_token(session: Session, by: Literal["hash", "id"], key: str) -> TokenHolder | None:
    """One round trip for everything authentication needs to know about a token (found by
    its SHA-256 ``hash`` or its ``id``): the token, its user, the user's roles in the token's
    organisation and their own Patient there; none when it was read ahead."""
    ahead = recall(session, ("token", by, key))
    if ahead is not MISSING:
        return ahead
    row = session.execute(_BY[by], {"key": key}).first()
    return None if row is None else holder_of(row)


def touch(session: Session, holder: TokenHolder, now: datetime) -> None:
    """Record use, at most once a minute (a write on every request would cost more)."""
    if holder.last_used_at is None or now - holder.last_used_at > timedelta(minutes=1):
        session.execute(update(AuthToken).where(AuthToken.id == holder.token_id)
                        .values(last_used_at=now))


def own_patient(session: Session, user_id: str, org_id: str) -> str | None:
    return session.scalar(select(UserPatient.patient_id).where(
        UserPatient.user_id == user_id, UserPatient.org_id == org_id))


def resolve_token(session: Session, token: str, *, kind: str) -> Principal | None:
    """The principal a presented token stands for, or None if unknown, expired or revoked."""
    holder = load_token(session, "hash", hash_token(token))
    now = utcnow()
    if holder is None or holder.kind != kind or holder.revoked_at or holder.expires_at <= now:
        return None
    if not holder.is_active or not holder.roles:
        return None
    touch(session, holder, now)
    patient_id = holder.own_patient if Role.patient in holder.roles else None
    return Principal(user_id=holder.user_id, username=holder.username, org_id=holder.org_id,
                     roles=holder.roles, token_id=holder.token_id,
                     scopes=frozenset(holder.scopes.split()),
                     display_name=holder.display_name, client_id=holder.client_id,
                     patient_id=patient_id)


def link_patient(session: Session, user: User, org: Organisation, patient_id: str) -> None:
    """Make ``patient_id`` this user's own record in ``org`` (what role ``patient`` may see)."""
    if not patient_id or len(patient_id) > 64:
        raise IdentityError("a patient id is 1-64 characters")
    if not any(m.org_id == org.id and m.role == Role.patient.value for m in user.memberships):
        raise IdentityError(f"user {user.username!r} is not a patient of {org.slug!r}")
    row = session.scalar(select(UserPatient).where(UserPatient.user_id == user.id,
                                                   UserPatient.org_id == org.id))
    if row is None:
        session.add(UserPatient(user_id=user.id, org_id=org.id, patient_id=patient_id))
    else:
        row.patient_id = patient_id
    session.flush()


def revoke_token(session: Session, token_id: str) -> None:
    row = session.get(AuthToken, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
