"""Engine and sessions.

SQLite is tuned for a single busy host (WAL, a busy timeout, foreign keys on); PostgreSQL gets a
small pool whose connections are checked before use when they have sat idle (see
:func:`_check_idle`), so a restarted server is noticed on the next request, not by a 500,
without a ping round trip on every request of a busy server.

Read-only work (a FHIR read, a token lookup) can use :meth:`Database.read_session`: its
statements run in autocommit, so on PostgreSQL it costs no BEGIN and COMMIT round trips and on
SQLite it takes no write lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker


@contextmanager
def _committed(session: Session) -> Iterator[None]:
    """Commit ``session`` when the block succeeds, roll it back on any error."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


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


_AUTOCOMMIT = "careplane_autocommit"
# On SQLite the driver already runs in autocommit (transactions are begun by _sqlite_begin), so
# a read session only skips that BEGIN; SQLAlchemy's AUTOCOMMIT isolation level would hand the
# connection back to the pool with the driver's own transaction handling switched on again.

_IDLE_PING_S = 5.0
"""A pooled PostgreSQL connection idle longer than this is pinged before it is handed out."""


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info["careplane.idle_since"] = time.monotonic()


def _check_idle(dialect: Any) -> Any:
    """A pool ``checkout`` hook: hand out a connection only if it is alive.

    A connection that the driver already knows is closed is replaced at no cost; one that has
    been idle for a while (the server may have restarted, or a firewall dropped it) is pinged
    first. A connection used moments ago is not: a busy server would otherwise pay a round
    trip on every request (SQLAlchemy's ``pool_pre_ping``). The price: a request that meets
    a server restart within those few seconds fails on its first statement (answered 503,
    "try again"), and that failure invalidates the whole pool, so the next request gets fresh
    connections.
    """
    def check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
            raise DisconnectionError("the connection was closed")
        idle_since = record.info.get("careplane.idle_since")
        if idle_since is not None and time.monotonic() - idle_since < _IDLE_PING_S:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool replaces it and tries the next one
            raise DisconnectionError("the connection did not answer a ping") from exc

    return check


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get(_AUTOCOMMIT):
        return  # read_session: the driver runs each statement on its own, no write lock
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
            kwargs.update(pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine.pool, "connect", _checked_in)
            event.listen(self.engine.pool, "checkin", _checked_in)
            event.listen(self.engine.pool, "checkout", _check_idle(self.engine.dialect))
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
        with self.sessions() as session, _committed(session):
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for read-only work whose statements run in autocommit.

        On PostgreSQL this saves the BEGIN and COMMIT round trips (under READ COMMITTED each
        statement of a transaction sees its own snapshot anyway); on SQLite it takes no write
        lock, so it never waits for a writer. ``commit`` still runs the session's commit
        hooks (a read's audit record is queued there), and an error still skips them. Do not
        write through it: each statement would commit on its own.
        """
        option = {_AUTOCOMMIT: True} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}
        with self.engine.connect().execution_options(**option) as conn, \
                Session(bind=conn, expire_on_commit=False) as session, _committed(session):
            yield session

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
