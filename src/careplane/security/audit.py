"""The audit trail: append-only and hash-chained.

Each record's hash covers its content and the previous record's hash, so editing or deleting any
record breaks every later link, which :func:`verify` reports.

Three ways in, one chain:

* :func:`record` appends in the caller's transaction, at once. A refusal and a review are
  recorded this way: if the transaction fails, so does its audit record, and the other way
  round.
* :func:`record_at_commit` is for changes (create, update, delete, export, execute): the
  record is part of the caller's transaction too, but it is chained on as that transaction
  commits. Appending takes the chain's lock, which is held until the commit ends; appended
  when the change is decided, it would be held while the change is written, and two clients
  writing at once (two transaction bundles) would take turns for their whole length instead
  of for their commits. A savepoint rolled back drops what was recorded in it, and a
  transaction rolled back drops everything it recorded.
* :func:`record_after_commit` is for read-only access (read, search — FHIR read/vread/search/
  history, DICOMweb and genomics reads). Such an access changes nothing, so its record need
  not cost the request a durable commit of its own: once the request's transaction commits,
  the record goes to this process's :class:`AuditWriter`, which appends what has gathered
  in one transaction (group commit, the chain computed under the chain lock) at most
  ``delay`` seconds later (50 ms by default, ``CAREPLANE_AUDIT_DELAY_MS``). This is the
  asynchronous delivery IHE ATNA describes for audit messages. SQLite and PostgreSQL alike:
  every SQLite transaction takes the database's write lock when it begins
  (:mod:`careplane.platform.db`), so the writer's batch simply waits its turn like any
  request, and a read needs no write lock of its own.

  Durability window, stated plainly: a read's record is on disk up to ``delay`` (plus one
  commit, plus any wait for SQLite's write lock) after the response has gone out. A clean
  shutdown (end of the application's lifespan, ``Database.dispose``, exit of the CLI or of a
  worker) writes everything queued first, and so does :func:`flush_all` (called by whoever
  reads the trail: :func:`verify`, the audit API, the FHIR AuditEvent endpoints). A process
  killed outright (SIGKILL, power loss) loses the reads of its last ``delay``; no change and
  no refusal is ever lost, since those never take this path.
  The chain's order (ids) is the order of appending; ``at`` is the time of the access itself.
  The writer fails closed: when it cannot write (database down) its queue fills, and once it
  holds ``capacity`` records a read waits up to ``wait`` seconds for room and is then
  answered 503 rather than served unrecorded.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Engine,
    Integer,
    String,
    Text,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from careplane.platform.db import Base, DatabaseUnavailable, JSONType, UTCDateTime, utcnow
from careplane.platform.logs import request_id_var
from careplane.security._principal import Principal
from careplane.security.policy import Decision, Target

__all__ = ["AuditRecord", "AuditUnavailable", "AuditWriter", "Outcome", "VerifyResult",
           "close_writer", "flush", "flush_all", "record", "record_after_commit",
           "record_at_commit", "verify", "writer_for"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64


class Outcome(StrEnum):
    success = "success"
    denied = "denied"
    failure = "failure"


class AuditRecord(Base):
    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[str | None] = mapped_column(String(32), index=True)
    actor_name: Mapped[str] = mapped_column(String(150), default="")
    org_id: Mapped[str | None] = mapped_column(String(32), index=True)
    action: Mapped[str] = mapped_column(String(32))
    target_kind: Mapped[str] = mapped_column(String(100))
    target_id: Mapped[str | None] = mapped_column(String(200))
    target_org_id: Mapped[str | None] = mapped_column(String(32))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    purpose: Mapped[str | None] = mapped_column(String(64))
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    source: Mapped[str | None] = mapped_column(String(100))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


_CHAINED = ("at", "actor_id", "actor_name", "org_id", "action", "target_kind", "target_id",
            "target_org_id", "patient_id", "outcome", "reason", "purpose", "break_glass",
            "source", "request_id", "detail")


def _digest(values: Mapping[str, Any], prev_hash: str) -> str:
    content = {name: values[name] for name in _CHAINED}
    content["at"] = values["at"].isoformat()
    blob = orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(prev_hash.encode() + blob).hexdigest()


def _content_of(row: AuditRecord) -> dict[str, Any]:
    """What a stored record's hash covers, read back from its row."""
    return {name: getattr(row, name) for name in _CHAINED}


def _lock_chain(session: Session) -> None:
    """Serialise appends so that two transactions never chain onto the same predecessor."""
    # On SQLite every transaction already holds the database's one write lock from its BEGIN
    # (platform.db), so appends are serialised there without asking.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7350001)"))


def _values(principal: Principal | None, action: str, target: Target, outcome: Outcome,
            decision: Decision | None, source: str | None,
            detail: dict[str, Any] | None) -> dict[str, Any]:
    """A record's content as of now (plain values: cheaper to queue than a mapped object)."""
    return dict(
        at=utcnow(),
        actor_id=principal.user_id if principal else None,
        actor_name=principal.username if principal else "",
        org_id=principal.org_id if principal else None,
        action=str(action), target_kind=target.kind, target_id=target.id,
        target_org_id=target.org_id, patient_id=target.patient_id, outcome=outcome.value,
        reason=decision.reason if decision else "",
        purpose=decision.purpose if decision else None,
        break_glass=bool(decision and decision.break_glass), source=source,
        request_id=request_id_var.get(), detail=detail or {})


def _chain(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Take the chain's lock and link ``rows`` (record values) onto the newest record, in
    order: each gets its ``prev_hash`` and ``hash``."""
    _lock_chain(session)
    prev_hash = session.scalar(
        select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)) or GENESIS
    for values in rows:
        values["prev_hash"] = prev_hash
        values["hash"] = prev_hash = _digest(values, prev_hash)


def _append(session: Session, rows: list[dict[str, Any]]) -> None:
    """Chain ``rows`` (record values) on and insert them in ``session``: one statement, no
    mapped objects (the writer's batches and a transaction's changes need no ids back)."""
    _chain(session, rows)
    session.execute(insert(AuditRecord), rows)


def record(session: Session, principal: Principal | None, action: str, target: Target, *,
           outcome: Outcome = Outcome.success, decision: Decision | None = None,
           source: str | None = None, detail: dict[str, Any] | None = None) -> AuditRecord:
    """Append a record in the caller's transaction (it commits or fails with the change)."""
    values = _values(principal, action, target, outcome, decision, source, detail)
    _chain(session, [values])
    row = AuditRecord(**values)
    session.add(row)
    session.flush()
    return row


# -- changes: chained on as their transaction commits ---------------------------------------

_AT_COMMIT = "careplane.audit.at_commit"


def record_at_commit(session: Session, principal: Principal | None, action: str,
                     target: Target, *, outcome: Outcome = Outcome.success,
                     decision: Decision | None = None, source: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
    """Record a change in the caller's transaction, chained on as it commits (module doc)."""
    _queue_at_commit(session, [_values(principal, action, target, outcome, decision, source,
                                       detail)])


def _queue_at_commit(session: Session, rows: list[dict[str, Any]]) -> None:
    # Each record remembers the savepoint it was made in, if any, so that rolling that
    # savepoint back can drop it. Its transaction is begun now if it has not been, so that
    # whatever ends that transaction ends the record with it.
    session.connection()
    where = session.get_nested_transaction()
    session.info.setdefault(_AT_COMMIT, []).extend((where, values) for values in rows)


@event.listens_for(Session, "before_commit")
def _append_at_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: its records wait for the end
        return
    queued = session.info.pop(_AT_COMMIT, None)
    if queued:
        _append(session, [values for _, values in queued])


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous: SessionTransaction) -> None:
    queued = session.info.get(_AT_COMMIT)
    if not queued:
        return
    if not previous.nested:
        session.info.pop(_AT_COMMIT, None)
        return
    session.info[_AT_COMMIT] = [(where, values) for where, values in queued
                                if not _inside(where, previous)]


def _inside(transaction: SessionTransaction | None, savepoint: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is savepoint:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_transaction_end")
def _drop_unappended(session: Session, transaction: SessionTransaction) -> None:
    # A transaction closed without a commit (or ended by an error) leaves nothing behind for
    # the session's next one.
    if transaction.parent is None:
        session.info.pop(_AT_COMMIT, None)


# -- read-only access: recorded after the request's commit, group-committed ----------------

_PENDING = "careplane.audit.pending"


def record_after_commit(session: Session, principal: Principal | None, action: str,
                        target: Target, *, outcome: Outcome = Outcome.success,
                        decision: Decision | None = None, source: str | None = None,
                        detail: dict[str, Any] | None = None) -> None:
    """Record a read-only access once ``session``'s transaction commits (see the module doc).

    Rolled back, the record is dropped with the rest of the request, as :func:`record`'s would
    be. The commit fails with :class:`AuditUnavailable` (503) when the writer's queue stays
    full (its database is down).
    """
    values = _values(principal, action, target, outcome, decision, source, detail)
    session.info.setdefault(_PENDING, []).append(values)


def _writer_of(session: Session) -> AuditWriter:
    bind = session.get_bind()
    return writer_for(bind if isinstance(bind, Engine) else bind.engine)


@event.listens_for(Session, "before_commit")
def _reserve_pending(session: Session) -> None:
    # Refusing here fails the commit cleanly (rolled back, 503); after it, too late.
    rows = session.info.get(_PENDING)
    if rows:
        _writer_of(session).reserve(len(rows))


@event.listens_for(Session, "after_commit")
def _submit_pending(session: Session) -> None:
    rows = session.info.pop(_PENDING, None)
    if rows:
        _writer_of(session).submit(rows)


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


class AuditUnavailable(DatabaseUnavailable):
    """The audit writer cannot take more records (its database is down): answer 503."""


class AuditWriter:
    """Appends queued audit records of one database in batches from a background thread.

    ``reserve`` (before the request's commit) waits up to ``wait`` seconds while ``capacity``
    records are already queued, then raises :class:`AuditUnavailable`; ``submit`` (after the
    commit) queues; the thread writes what has gathered
    ``delay`` seconds after the oldest queued record arrived, up to ``batch`` per transaction.
    ``flush`` writes everything queued so far before it returns; records keep the order in
    which they were submitted, whoever writes them.
    """

    def __init__(self, engine: Engine, *, delay: float = 0.05, capacity: int = 10_000,
                 batch: int = 1000, wait: float = 5.0) -> None:
        self.engine = engine
        self.delay = delay
        self.capacity = capacity
        self.batch = batch
        self.wait = wait
        self._queue: deque[tuple[float, dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._stopping = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="careplane-audit-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reserve(self, n: int) -> None:
        """Wait until ``n`` more records fit; :class:`AuditUnavailable` if none do in time."""
        deadline = time.monotonic() + self.wait
        with self._cond:
            while len(self._queue) + n > self.capacity and self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AuditUnavailable(
                        "the audit trail cannot be written (database unavailable); "
                        "the access was not served")
                self._cond.wait(left)

    def submit(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``rows`` (room having been reserved); never raises, never drops."""
        with self._cond:
            was_empty = not self._queue
            now = time.monotonic()
            self._queue.extend((now, row) for row in rows)
            # Wake the thread only when it has something new to do: a first record starts
            # its delay, a full batch ends it. Waking it on every read would cost each
            # request a thread switch for nothing.
            if was_empty or len(self._queue) >= self.batch:
                self._cond.notify_all()

    def flush(self) -> None:
        """Write every record submitted before this call; raises if the database refuses."""
        while True:
            with self._write_lock:
                if not self._queue:
                    return
                self._write_batch()

    def close(self) -> None:
        """Flush, then stop the thread (a later submit starts nothing: use a new writer)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.flush()

    def _write_batch(self) -> None:
        # Caller holds _write_lock; the batch goes back to the front if the write fails.
        with self._cond:
            taken = [self._queue.popleft()
                     for _ in range(min(self.batch, len(self._queue)))]
        try:
            with Session(bind=self.engine) as session:
                _append(session, [values for _, values in taken])
                session.commit()
        except BaseException:
            with self._cond:
                self._queue.extendleft(reversed(taken))
                self._cond.notify_all()
            raise
        with self._cond:
            self._cond.notify_all()  # room for submitters waiting on a full queue

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                due = self._queue[0][0] + self.delay
                while (not self._stopping and len(self._queue) < self.batch
                       and (left := due - time.monotonic()) > 0):
                    self._cond.wait(left)
            try:
                with self._write_lock:
                    if self._queue:
                        self._write_batch()
                self._failures = 0
            except Exception as exc:  # the database is down: keep the records, retry
                self._failures += 1
                log.error("audit records could not be written (%d queued, attempt %d): %s",
                          len(self._queue), self._failures, exc.__class__.__name__)
                with self._cond:
                    self._cond.wait(min(5.0, 0.1 * 2 ** min(self._failures, 6)))


_writers: dict[Engine, AuditWriter] = {}
_writers_lock = threading.Lock()
_settings: dict[str, float] = {}


def writer_for(engine: Engine, *, delay: float | None = None) -> AuditWriter:
    """This process's writer for ``engine`` (started on first use; ``delay`` in seconds)."""
    writer = _writers.get(engine)
    if writer is not None:
        return writer
    with _writers_lock:
        writer = _writers.get(engine)
        if writer is None:
            writer = AuditWriter(engine, delay=delay if delay is not None
                                 else _settings.get("delay", 0.05))
            _writers[engine] = writer
            if not event.contains(engine, "engine_disposed", _on_dispose):
                event.listen(engine, "engine_disposed", _on_dispose)
        return writer


def configure(*, delay: float) -> None:
    """The batching delay, in seconds, of writers started from now on in this process."""
    _settings["delay"] = delay


def close_writer(engine: Engine) -> None:
    """Write what ``engine``'s writer holds and stop it (shutdown)."""
    with _writers_lock:
        writer = _writers.pop(engine, None)
    if writer is not None:
        writer.close()


def _on_dispose(engine: Engine) -> None:
    if engine not in _writers:
        return
    try:
        close_writer(engine)
    except Exception as exc:
        log.error("audit records could not be written before the database was closed: %s",
                  exc.__class__.__name__)
    engine.pool.dispose()  # the connection the last flush opened


def flush(bind: Engine | Connection) -> None:
    """Write the queued audit records of this process for ``bind``'s database, if any."""
    writer = _writers.get(bind if isinstance(bind, Engine) else bind.engine)
    if writer is not None:
        writer.flush()


def flush_all() -> None:
    """Write every queued audit record of this process (reading the trail, tests, exit)."""
    for writer in list(_writers.values()):
        writer.flush()


def _close_all() -> None:
    for engine in list(_writers):
        try:
            close_writer(engine)
        except Exception as exc:
            log.error("audit records could not be written at exit: %s",
                      exc.__class__.__name__)


atexit.register(_close_all)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str = ""
    # The newest record verified: note it somewhere else (a ticket, a log host) and pass it
    # back as ``expect`` later, and deleting records from the end is noticed as well.
    head_id: int | None = None
    head_hash: str | None = None


def _walk(session: Session, batch: int = 5000) -> Iterator[AuditRecord]:
    after = 0
    while True:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.id > after)
                               .order_by(AuditRecord.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id
        session.expunge_all()


def verify(session: Session, *, expect: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute the chain; the first record that does not match is where tampering begins.

    A chain alone cannot show that its newest records were cut off; ``expect`` — a head
    ``(id, hash)`` noted from an earlier run — must still be in the chain, unchanged.
    """
    flush_all()  # reads recorded a moment ago are part of the chain being checked
    prev = GENESIS
    checked = 0
    head_id: int | None = None
    found_expected = expect is None
    for row in _walk(session):
        if row.prev_hash != prev:
            return VerifyResult(False, checked, row.id,
                                "link broken: a record before this one was deleted or changed")
        if _digest(_content_of(row), prev) != row.hash:
            return VerifyResult(False, checked, row.id, "content does not match its hash")
        if expect is not None and row.id == expect[0]:
            if row.hash != expect[1]:
                return VerifyResult(False, checked, row.id,
                                    "this record differs from the head noted earlier")
            found_expected = True
        prev = row.hash
        head_id = row.id
        checked += 1
    if not found_expected:
        assert expect is not None
        return VerifyResult(False, checked, expect[0],
                            "the head noted earlier is gone: records were cut off the end",
                            head_id, prev if head_id else None)
    return VerifyResult(True, checked, head_id=head_id, head_hash=prev if head_id else None)
