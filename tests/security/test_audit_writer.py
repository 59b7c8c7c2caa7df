"""Reads' audit records: queued at commit, group-committed on the chain, never lost on a clean
shutdown, and refused (503) rather than dropped when they cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from careplane.app import create_app
from careplane.platform.db import Database, DatabaseUnavailable
from careplane.security import Principal, Role
from careplane.security.audit import (
    AuditRecord,
    AuditUnavailable,
    AuditWriter,
    close_writer,
    configure,
    flush_all,
    record_after_commit,
    verify,
    writer_for,
)
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target
from careplane.settings import Settings
from tests.conftest import Accounts

ROOT = Path(__file__).resolve().parents[2]


def _nurse(org: str = "org1") -> Principal:
    return Principal(user_id="u1", username="nurse", org_id=org,
                     roles=frozenset({Role.clinician}), token_id="t1")


def _read(db: Database, principal: Principal, i: int, thread: int = 0) -> None:
    with db.session() as session:
        authorize(session, principal, Action.read,
                  Target("records:Observation", principal.org_id, id=f"o{i}"),
                  detail={"thread": thread, "i": i})


def _rows(db: Database) -> list[AuditRecord]:
    with db.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def _count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(AuditRecord)) or 0


@pytest.fixture
def slow_writer(db: Database) -> Iterator[AuditWriter]:
    """This database's writer with a delay long enough that only a flush writes in time."""
    close_writer(db.engine)
    writer = writer_for(db.engine, delay=30.0)
    yield writer
    close_writer(db.engine)


def test_a_read_is_recorded_after_commit_and_flush_writes_it(
        db: Database, slow_writer: AuditWriter) -> None:
    _read(db, _nurse(), 1)
    assert _count(db) == 0 and slow_writer.queued == 1  # waits for its batch
    flush_all()
    rows = _rows(db)
    assert [(r.action, r.target_id, r.outcome) for r in rows] == [("read", "o1", "success")]
    assert slow_writer.queued == 0
    with db.session() as session:
        assert verify(session).ok


def test_the_writer_commits_a_batch_within_its_delay(db: Database) -> None:
    close_writer(db.engine)
    writer_for(db.engine, delay=0.05)
    try:
        for i in range(5):
            _read(db, _nurse(), i)
        deadline = time.monotonic() + 10
        while _count(db) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        rows = _rows(db)
        assert [r.target_id for r in rows] == [f"o{i}" for i in range(5)]
        assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    finally:
        close_writer(db.engine)


def test_a_rolled_back_read_leaves_no_record(db: Database, slow_writer: AuditWriter) -> None:
    with pytest.raises(RuntimeError), db.session() as session:
        authorize(session, _nurse(), Action.read, Target("records:Patient", "org1", id="p1"))
        raise RuntimeError("the handler failed after the access check")
    assert slow_writer.queued == 0
    flush_all()
    assert _count(db) == 0


def test_changes_are_still_recorded_in_their_own_transaction(
        db: Database, slow_writer: AuditWriter) -> None:
    with db.session() as session:
        authorize(session, _nurse(), Action.create, Target("records:Patient", "org1", id="p1"))
    assert [r.action for r in _rows(db)] == ["create"]  # no flush needed
    assert slow_writer.queued == 0
    with pytest.raises(RuntimeError), db.session() as session:
        authorize(session, _nurse(), Action.update, Target("records:Patient", "org1", id="p1"))
        raise RuntimeError("the change failed")
    assert [r.action for r in _rows(db)] == ["create"]  # gone with its change


def test_concurrent_requests_keep_each_ones_order_and_a_valid_chain(db: Database) -> None:
    threads, per_thread = 6, 25
    close_writer(db.engine)
    writer_for(db.engine, delay=0.01)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                _read(db, _nurse(), i, thread=t)
                if i % 5 == 0:
                    # A change in between: chained in its own transaction, same lock.
                    with db.session() as session:
                        authorize(session, _nurse(), Action.create,
                                  Target("records:Patient", "org1", id=f"p{t}-{i}"))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert not errors, errors
        flush_all()
        rows = _rows(db)
        reads = [r for r in rows if r.action == "read"]
        assert len(reads) == threads * per_thread
        assert len(rows) - len(reads) == threads * per_thread // 5
        for t in range(threads):
            mine = [r.detail["i"] for r in reads if r.detail["thread"] == t]
            assert mine == list(range(per_thread))
        with db.session() as session:
            result = verify(session)
        assert result.ok and result.checked == len(rows)
    finally:
        close_writer(db.engine)


def test_disposing_the_database_writes_what_is_queued(db_url: str) -> None:
    first = Database(db_url)
    writer_for(first.engine, delay=60.0)
    for i in range(3):
        _read(first, _nurse(), i)
    first.dispose()  # what a lifespan's end, the CLI and the worker do on the way out
    second = Database(db_url)
    try:
        assert [r.target_id for r in _rows(second)] == ["o0", "o1", "o2"]
    finally:
        second.dispose()


def test_an_application_shutdown_writes_the_reads_of_its_last_moments(
        settings: Settings, accounts: Accounts, db: Database) -> None:
    admin = accounts.make("boss", Role.admin)
    slow = settings.model_copy(update={"audit_delay_ms": 5000.0})
    try:
        with TestClient(create_app(slow)) as client:
            assert client.get("/api/audit", headers=admin.headers).status_code == 200
    finally:
        configure(delay=settings.audit_delay_ms / 1000)
    listed = [r for r in _rows(db) if r.target_kind == "audit:record"]
    assert [(r.action, r.actor_name) for r in listed] == [("search", "boss")]


def test_process_exit_writes_what_is_queued(db_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from careplane.platform.db import Database
        from careplane.security import Principal, Role
        from careplane.security.audit import writer_for
        from careplane.security.guard import authorize
        from careplane.security.policy import Action, Target

        db = Database({db_url!r})
        writer_for(db.engine, delay=600.0)
        nurse = Principal("u1", "nurse", "org1", frozenset({{Role.clinician}}), "t1")
        for i in range(4):
            with db.session() as session:
                authorize(session, nurse, Action.search, Target("records:Patient", "org1"),
                          detail={{"i": i}})
        # no dispose, no flush: the interpreter's exit must write them
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    db = Database(db_url)
    try:
        rows = _rows(db)
        assert [r.detail["i"] for r in rows] == [0, 1, 2, 3]
        with db.session() as session:
            assert verify(session).ok
    finally:
        db.dispose()


def test_a_full_queue_fails_closed_when_the_database_is_down(tmp_path: Path) -> None:
    # A database that cannot be reached: the writer keeps its records and retries.
    down = Database("postgresql+psycopg://careplane@127.0.0.1:1/none?connect_timeout=1")
    writer = AuditWriter(down.engine, delay=0.0, capacity=3, wait=0.3)
    try:
        from careplane.security.audit import (
            Outcome,
            _values,  # what a read queues
        )

        def one(i: int) -> dict[str, Any]:
            return _values(_nurse(), "read", Target("records:Patient", "org1", id=f"p{i}"),
                           Outcome.success, None, "test", None)

        writer.reserve(3)
        writer.submit([one(0), one(1), one(2)])
        started = time.monotonic()
        with pytest.raises(AuditUnavailable) as refused:
            writer.reserve(1)
        assert time.monotonic() - started >= 0.25  # it waited for room first
        assert isinstance(refused.value, DatabaseUnavailable)  # answered 503 by the app
        assert writer.queued == 3  # nothing dropped
        with pytest.raises(OperationalError):  # an explicit flush reports the failure
            writer.flush()
        assert writer.queued == 3
        with pytest.raises(OperationalError):  # so does a shutdown that cannot write them
            writer.close()
    finally:
        down.dispose()


def test_a_full_queue_answers_503_over_http(settings: Settings, accounts: Accounts,
                                            db: Database,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    nurse = accounts.make("nurse")
    app = create_app(settings)

    def refuse(self: AuditWriter, n: int) -> None:
        raise AuditUnavailable("the audit trail cannot be written")

    with TestClient(app) as client:
        monkeypatch.setattr(AuditWriter, "reserve", refuse)
        r = client.get("/fhir/Patient?name=x", headers=nurse.headers)
        assert r.status_code == 503, r.text
        monkeypatch.undo()
        assert client.get("/fhir/Patient?name=x", headers=nurse.headers).status_code == 200


def test_record_after_commit_with_a_session_bound_to_a_connection(
        db: Database, slow_writer: AuditWriter) -> None:
    from sqlalchemy.orm import Session

    with db.engine.connect() as conn, Session(bind=conn) as session:
        record_after_commit(session, _nurse(), "read", Target("records:Patient", "org1"))
        session.commit()
        conn.commit()
    flush_all()
    assert [r.action for r in _rows(db)] == ["read"]
