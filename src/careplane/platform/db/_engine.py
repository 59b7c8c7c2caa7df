"""Engine and sessions.

SQLite is tuned for a single busy host (WAL, a busy timeout, foreign keys on); PostgreSQL gets a
small pool with pre-ping so a restarted server is noticed on the next request, not by a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message names it without its password."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite defers BEGIN on its own; take over transaction control so that SQLAlchemy's
    # BEGIN (issued in _sqlite_begin) starts every transaction at the first statement.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE: take SQLite's one write lock when the transaction starts, waiting for it up
    # to the busy timeout. A deferred transaction that reads and then writes cannot wait: if
    # another connection committed in between, its snapshot is stale and SQLite refuses the
    # write at once ("database is locked"), which concurrent requests hit constantly (every
    # audited read writes its audit record). Requests are short, so queueing them is cheap.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Owns one engine and its session factory; cheap to pass around, one per process."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database at {self.safe_url}: {exc.__class__.__name__}: "
                f"{str(exc.orig if hasattr(exc, 'orig') else exc).strip().splitlines()[0]}"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()
