"""Shared fixtures. Every storage-touching test runs twice: on SQLite and on PostgreSQL.

PostgreSQL tests use one database per test session, migrated once and truncated after each
test. Where no server is reachable they are skipped, except in CI (``CI=true``) where a missing
PostgreSQL is an error: the suite must prove both backends.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from careplane.app import create_app
from careplane.platform.db import Base, Database, migrate
from careplane.security import Role
from careplane.security.identity import create_org, create_user, issue_token
from careplane.settings import Settings
from tests.support.browser import SharedChromium

PG_ADMIN_URL = os.environ.get("CAREPLANE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means: no usable server
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"


@pytest.fixture
def real_password_hashing() -> None:
    """Ask for this to keep the production Argon2id parameters in a test."""


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with the smallest parameters: same code paths, a fraction of the time.

    Tests about the hash itself ask for ``real_password_hashing``; the others (every test that
    makes an account) are about what happens around the hash, not its cost. Servers started in
    a subprocess keep the production parameters.
    """
    if "real_password_hashing" in request.fixturenames:
        return
    from careplane.security import passwords

    hasher, dummy = _cheap_hasher()
    monkeypatch.setattr(passwords, "_hasher", hasher)
    monkeypatch.setattr(passwords, "_DUMMY", dummy)


@functools.cache
def _cheap_hasher() -> tuple[object, str]:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    return cheap, cheap.hash("careplane-timing-equaliser")


@pytest.fixture(scope="session", autouse=True)
def migration_heads_read_once() -> Iterator[None]:
    """The newest revisions, read from the migration scripts once per test run.

    Every application start compares the database with the scripts' heads, and finding them
    makes Alembic import every revision file: a tenth of a second or more, at each of the
    hundreds of app starts of a run, for an answer that cannot change during the run.
    """
    from careplane.platform.db import _migrate

    read = _migrate._heads
    heads: set[str] = set()

    def heads_once(db: Database) -> set[str]:
        if not heads:
            heads.update(read(db))
        return set(heads)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_migrate, "_heads", heads_once)
        yield


@pytest.fixture(scope="module")
def chromium() -> Iterator[SharedChromium]:
    """Headless Chromium for the browser tests of one module: ``chromium.page(...)``."""
    shared = SharedChromium()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(f"sqlite:///{path}")
    migrate(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = _pg_reachable()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"careplane_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        # Commits need not wait for the disk here: what is committed is as visible to every
        # connection as before, and a test database is never recovered after a crash.
        conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    migrate(db)
    db.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


# A table with more rows than this is emptied with TRUNCATE (fresh files, fresh planner
# statistics) rather than DELETE, so a test that loaded thousands of rows leaves no dead ones.
_TRUNCATE_FROM_ROWS = 500


def _truncate_postgres(url: str) -> None:
    """Empty every table and restart every sequence, as a freshly migrated database has them.

    Connections a test left open (a server it started, a pool it did not dispose) are ended
    first: otherwise one idle in a transaction would block the reset. TRUNCATE of all tables
    costs close to a second (it replaces the files of every table and index), so only tables
    with many rows are truncated; the few rows of a typical test are deleted, children first.
    """
    engine = create_engine(url, poolclass=NullPool)
    tables = [t.name for t in Base.metadata.sorted_tables]
    probe = " UNION ALL ".join(
        f"SELECT '{name}', (SELECT count(*) FROM (SELECT 1 FROM \"{name}\" "
        f"LIMIT {_TRUNCATE_FROM_ROWS + 1}) AS sample)" for name in tables)
    with engine.begin() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        conn.execute(text("SET LOCAL lock_timeout = '30s'"))
        rows = {name: count for name, count in conn.exec_driver_sql(probe)}
        large = [name for name in tables if rows[name] > _TRUNCATE_FROM_ROWS]
        if large:
            conn.exec_driver_sql(
                "TRUNCATE " + ", ".join(f'"{name}"' for name in large) + " CASCADE")
        for name in reversed(tables):
            if 0 < rows[name] <= _TRUNCATE_FROM_ROWS:
                conn.exec_driver_sql(f'DELETE FROM "{name}"')
        used = conn.execute(text(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) "
            "FROM pg_sequences WHERE schemaname = current_schema() "
            "AND last_value IS NOT NULL")).scalars().all()
        for sequence in used:
            conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} RESTART")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for this test (the URL, for tests that start processes)."""
    if request.param == "sqlite":
        path = tmp_path / "careplane.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        try:
            yield url
        finally:
            _truncate_postgres(url)


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """The PostgreSQL database alone, for tests that only make sense there; emptied afterwards."""
    try:
        yield postgres_url
    finally:
        _truncate_postgres(postgres_url)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "data", database_url=db_url,
                    job_workers=0, event_poll_seconds=0.05, log_json=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@dataclass
class Account:
    username: str
    password: str
    user_id: str
    org_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Accounts:
    """Makes organisations and users with tokens, for tests that need someone to be."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.orgs: dict[str, str] = {}

    def org(self, slug: str) -> str:
        if slug not in self.orgs:
            with self.db.session() as session:
                self.orgs[slug] = create_org(session, slug, slug.title()).id
        return self.orgs[slug]

    def make(self, username: str, *roles: Role, org: str = "org-a") -> Account:
        from datetime import timedelta

        from careplane.security.models import Organisation

        org_id = self.org(org)
        password = f"{username}-password"
        with self.db.session() as session:
            organisation = session.get(Organisation, org_id)
            assert organisation is not None
            user = create_user(session, username, password, org=organisation,
                               roles=list(roles or (Role.clinician,)))
            issued = issue_token(session, user, kind="bearer", lifetime=timedelta(hours=1))
            return Account(username, password, user.id, org_id, issued.token)


@pytest.fixture
def accounts(db: Database) -> Accounts:
    return Accounts(db)
