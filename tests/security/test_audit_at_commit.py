"""A change's audit record is part of its transaction but chained on as that commits."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.platform.db import Database
from careplane.security import Principal, Role, audit
from careplane.security.audit import AuditRecord, record_at_commit, verify
from careplane.security.identity import create_org
from careplane.security.models import Organisation
from careplane.security.policy import Target


def _principal() -> Principal:
    return Principal(user_id="u1", username="registrar", org_id="org1",
                     roles=frozenset({Role.clinician}), token_id="t1")


def _change(session: Session, rid: str) -> None:
    record_at_commit(session, _principal(), "create",
                     Target("records:Patient", "org1", id=rid, patient_id=rid))


def _chained(db: Database) -> list[str | None]:
    with db.session() as session:
        assert verify(session).ok
        return list(session.scalars(select(AuditRecord.target_id).order_by(AuditRecord.id)))


def test_recorded_changes_are_chained_when_their_transaction_commits(db: Database) -> None:
    with db.session() as session:
        _change(session, "p1")
        _change(session, "p2")
        assert session.scalar(select(AuditRecord.id).limit(1)) is None  # not yet
    assert _chained(db) == ["p1", "p2"]


def test_a_rolled_back_transaction_leaves_no_record_for_the_next_one(db: Database) -> None:
    with db.sessions() as session:
        _change(session, "lost")
        session.rollback()
        _change(session, "kept")
        session.commit()
    with db.sessions() as session:
        _change(session, "closed-without-commit")
    with db.session():
        pass
    assert _chained(db) == ["kept"]


def test_a_savepoint_rolled_back_drops_only_its_own_records(db: Database) -> None:
    with db.session() as session:
        _change(session, "before")
        with session.begin_nested():
            _change(session, "released")
        try:
            with session.begin_nested():
                _change(session, "failed")
                with session.begin_nested():
                    _change(session, "failed-inner")
                raise ValueError("the entry fails")
        except ValueError:
            pass
        _change(session, "after")
    assert _chained(db) == ["before", "released", "after"]


def test_writers_wait_on_the_chain_only_for_each_others_commit(
        postgres_db_url: str) -> None:
    """A change decided and still being written does not hold up a second writer's commit:
    the chain's lock is taken only as a transaction commits."""
    db = Database(postgres_db_url)
    try:
        committed = threading.Event()

        def quick() -> None:
            with db.session() as other:
                _change(other, "quick")
            committed.set()

        with db.session() as slow:
            _change(slow, "slow")
            slow.execute(select(AuditRecord.id).limit(1))  # its transaction is under way
            thread = threading.Thread(target=quick)
            thread.start()
            assert committed.wait(10), "the second writer waited for the first to finish"
            thread.join()
        assert _chained(db) == ["quick", "slow"]
    finally:
        db.dispose()


@pytest.mark.parametrize("fails", [False, True])
def test_the_change_commits_only_with_its_record(db: Database, fails: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is part of the transaction: if it cannot be chained on, nothing commits."""
    appended: list[int] = []
    real = audit._append

    def append(session: Session, rows: list[dict[str, object]]) -> None:
        appended.append(len(rows))
        if fails:
            raise RuntimeError("the audit table is gone")
        real(session, rows)

    monkeypatch.setattr(audit, "_append", append)
    with pytest.raises(RuntimeError) if fails else nullcontext(), db.session() as session:
        _change(session, "p1")
        create_org(session, "org-new", "New")
    monkeypatch.undo()
    assert appended == [1]
    assert _chained(db) == ([] if fails else ["p1"])
    with db.session() as session:
        found = session.scalar(select(Organisation).where(Organisation.slug == "org-new"))
        assert (found is None) is fails
