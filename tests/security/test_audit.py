"""The hash-chained audit trail: every change to a past record is found by ``verify``."""

from __future__ import annotations

from sqlalchemy import text

from careplane.platform.db import Database
from careplane.security import Principal, Role
from careplane.security.audit import AuditRecord, Outcome, record, verify
from careplane.security.policy import Target


def _principal() -> Principal:
    return Principal(user_id="u1", username="nurse", org_id="org1",
                     roles=frozenset({Role.clinician}), token_id="t1")


def _fill(db: Database, n: int = 5) -> list[int]:
    ids = []
    with db.session() as session:
        for i in range(n):
            row = record(session, _principal(), "read",
                         Target("records:Patient", "org1", id=f"p{i}", patient_id=f"p{i}"),
                         detail={"i": i})
            ids.append(row.id)
    return ids


def test_empty_and_intact_chains_verify(db: Database) -> None:
    with db.session() as session:
        assert verify(session).ok
    ids = _fill(db)
    with db.session() as session:
        result = verify(session)
    assert result.ok and result.checked == len(ids) and result.first_bad_id is None


def test_records_link_to_their_predecessor(db: Database) -> None:
    _fill(db, 3)
    with db.session() as session:
        rows = session.query(AuditRecord).order_by(AuditRecord.id).all()
        assert rows[0].prev_hash == "0" * 64
        assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
        assert rows[1].actor_name == "nurse" and rows[1].outcome == Outcome.success


def test_edited_record_is_the_first_bad_one(db: Database) -> None:
    ids = _fill(db)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET target_id = 'someone-else' WHERE id = :i"),
                     {"i": ids[2]})
    with db.session() as session:
        result = verify(session)
    assert not result.ok
    assert result.first_bad_id == ids[2]
    assert result.checked == 2
    assert "does not match" in result.problem


def test_edited_outcome_or_detail_is_detected(db: Database) -> None:
    ids = _fill(db)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET outcome = 'denied' WHERE id = :i"),
                     {"i": ids[0]})
    with db.session() as session:
        assert verify(session).first_bad_id == ids[0]


def test_deleted_record_breaks_the_next_link(db: Database) -> None:
    ids = _fill(db)
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_record WHERE id = :i"), {"i": ids[1]})
    with db.session() as session:
        result = verify(session)
    assert not result.ok
    assert result.first_bad_id == ids[2]
    assert "link broken" in result.problem


def test_rehashed_record_still_breaks_the_following_link(db: Database) -> None:
    """Recomputing one record's own hash after editing it does not hide the edit."""
    ids = _fill(db)
    with db.session() as session:
        row = session.get(AuditRecord, ids[1])
        assert row is not None
        row.reason = "nothing to see"
        from careplane.security.audit import _content_of, _digest

        new_hash = _digest(_content_of(row), row.prev_hash)
        session.flush()
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET hash = :h WHERE id = :i"),
                     {"h": new_hash, "i": ids[1]})
    with db.session() as session:
        result = verify(session)
    assert result.first_bad_id == ids[2]


def test_expected_head_must_still_be_there_unchanged(db: Database) -> None:
    ids = _fill(db)
    with db.session() as session:
        result = verify(session)
    assert result.head_id == ids[-1] and result.head_hash
    head = (result.head_id, result.head_hash)
    _fill(db, 2)
    with db.session() as session:
        assert verify(session, expect=head).ok
        assert not verify(session, expect=(ids[-1], "0" * 64)).ok
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_record WHERE id >= :i"), {"i": ids[-1]})
    with db.session() as session:
        assert verify(session).ok
        cut = verify(session, expect=head)
    assert not cut.ok and cut.first_bad_id == ids[-1]
