"""Storing an instance: the one path every ingest takes (STOW-RS, C-STORE, demo, imports).

``store_instance`` checks the bytes, keeps the Part-10 file unchanged in the blob store, and
indexes it under its patient, study and series, inside a savepoint of the caller's
transaction: an instance that fails leaves nothing behind, and the others of the same request
are kept. It announces ``imaging.instance.stored`` for each instance and, once per study and
transaction, ``imaging.study.changed`` (both scoped to the organisation), which is what the AI
triage and the FHIR link listen to.
"""

from __future__ import annotations

import io
import logging
import queue
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from careplane.imaging.attributes import IndexValues, index_values
from careplane.imaging.config import DuplicatePolicy, imaging_settings
from careplane.imaging.dicomjson import dataset_to_json
from careplane.imaging.models import DicomInstance, DicomPatient, DicomSeries, DicomStudy
from careplane.imaging.part10 import FailureReason, InvalidInstance, read_instance
from careplane.platform.blobs import BlobRef, BlobStore, BlobStoreFull, BlobTooLarge
from careplane.platform.db import Database, utcnow
from careplane.platform.events import publish
from careplane.security import Principal
from careplane.security.audit import record as audit_record
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["INSTANCE_STORED", "STUDY_CHANGED", "BlobTee", "StoreFailure", "StoredInstance",
           "store_instance"]

log = logging.getLogger(__name__)

INSTANCE_STORED = "imaging.instance.stored"
STUDY_CHANGED = "imaging.study.changed"
_PENDING = "careplane.imaging.changed_studies"
_LISTENING = "careplane.imaging.listening"
_ALLOWED = "careplane.imaging.allowed_studies"
_SPOOL = 64 * 1024 * 1024
_WRITER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="careplane-blob-write")


@dataclass(frozen=True)
class StoredInstance:
    """An instance now in the store. ``outcome``: stored, kept-existing or overwritten."""

    instance_pk: int
    org_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_sha256: str
    size: int
    outcome: str

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class StoreFailure:
    """An instance refused: ``reason`` is the DICOM failure code, ``message`` says why."""

    reason: int
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None

    @property
    def ok(self) -> bool:
        return False


class BlobTee:
    """Writes bytes to the blob store as they arrive, on a writer thread.

    STOW-RS hands each part's bytes here while it is still receiving the rest, so the file
    is mostly on disk by the time the part is complete. A part up to :data:`KEEP_IN_MEMORY`
    is also kept (the same bytes objects, not a copy) so it can be checked and indexed while
    the writer finishes; :func:`store_instance` takes :attr:`writing` instead of writing the
    file again.
    """

    KEEP_IN_MEMORY = 64 * 1024 * 1024

    def __init__(self, blobs: BlobStore, max_bytes: int | None = None) -> None:
        self._queue: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self.writing: Future[BlobRef] = _WRITER.submit(blobs.put, self._chunks(),
                                                       max_bytes=max_bytes)
        self._open = True
        self._kept: list[bytes] | None = []
        self._size = 0

    def _chunks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item  # the blob store discards the partial file
            yield item

    def write(self, data: bytes) -> None:
        if self._open and data:
            self._queue.put(data)
            self._size += len(data)
            if self._kept is not None:
                self._kept.append(data)
                if self._size > self.KEEP_IN_MEMORY:
                    self._kept = None

    def close(self) -> bytes | None:
        """No more bytes; returns them all if they were kept in memory."""
        if self._open:
            self._open = False
            self._queue.put(None)
        kept, self._kept = self._kept, None
        return b"".join(kept) if kept is not None else None

    def finish(self) -> BlobRef | None:
        """The stored blob, or None if writing it failed."""
        self.close()
        try:
            return self.writing.result()
        except Exception:  # reported by the caller as a storage failure
            return None

    def abort(self) -> None:
        """Stop: the bytes so far are not kept."""
        if self._open:
            self._open = False
            self._kept = None
            self._queue.put(_Aborted("the part was not received whole"))
        wait([self.writing])


class _Aborted(Exception):
    pass


def _spooled(source: BinaryIO | bytes | bytearray | memoryview) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if source.seekable():
        return source
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 - returned to caller
    while chunk := source.read(1024 * 1024):
        spool.write(chunk)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def _admit(session: Session, who: Principal | str, org_id: str, study_uid: str,
           origin: str) -> None:
    """Decide (and audit) the write once per study and transaction."""
    allowed: set[tuple[str, str]] = session.info.setdefault(_ALLOWED, set())
    actor = who.user_id if isinstance(who, Principal) else f"org:{who}"
    if (actor, study_uid) in allowed:
        return
    target = Target(kind="imaging:study", org_id=org_id, id=study_uid)
    if isinstance(who, Principal):
        authorize(session, who, Action.create, target, source=origin or None)
    else:
        # A DICOM peer admitted by the AE allow-list, or a trusted in-process import.
        audit_record(session, None, Action.create.value, target, source=origin or None)
    allowed.add((actor, study_uid))


def _announce(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is being released; announce when the whole transaction commits
    pending: dict[int, str] = session.info.pop(_PENDING, {})
    for study_pk, org_id in pending.items():
        study = session.get(DicomStudy, study_pk)
        if study is None:
            continue
        session.refresh(study)
        publish(session, STUDY_CHANGED, {
            "study_instance_uid": study.study_instance_uid,
            "study_pk": study.id,
            "patient_id": study.patient_id,
            "issuer_of_patient_id": study.issuer_of_patient_id,
            "patient_name": study.patient_name,
            "patient_birth_date": study.patient_birth_date,
            "patient_sex": study.patient_sex,
            "study_date": study.study_date,
            "accession_number": study.accession_number,
            "modalities": [m for m in study.modalities.split("\\") if m],
            "num_series": study.num_series,
            "num_instances": study.num_instances,
        }, org_id=org_id)
    if imaging_settings().fhir_link:
        from careplane.imaging.fhir_link import queue_link

        for org_id in sorted(set(pending.values())):
            queue_link(session, org_id)


def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    session.info.pop(_PENDING, None)
    session.info.pop(_ALLOWED, None)


def _note_study_changed(session: Session, study_pk: int, org_id: str) -> None:
    if not session.info.get(_LISTENING):
        event.listen(session, "before_commit", _announce)
        event.listen(session, "after_transaction_end", _forget)
        session.info[_LISTENING] = True
    session.info.setdefault(_PENDING, {})[study_pk] = org_id


def _get_or_create(session: Session, model: type[Any], where: dict[str, Any],
                   values: dict[str, Any]) -> tuple[Any, bool]:
    """Find the row, or insert it; a concurrent insert of the same row is found, not failed."""
    query = select(model).filter_by(**where)
    row = session.scalars(query).first()
    if row is not None:
        return row, False
    try:
        with session.begin_nested():
            row = model(**where, **values)
            session.add(row)
        return row, True
    except IntegrityError:
        row = session.scalars(query).first()
        if row is None:
            raise
        return row, False


def _fill_blanks(row: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if value not in (None, "") and getattr(row, key) in (None, ""):
            setattr(row, key, value)


def _bump(session: Session, model: type[Any], pk: int, **deltas: int) -> None:
    session.execute(update(model).where(model.id == pk).values(
        **{k: getattr(model, k) + v for k, v in deltas.items()}, updated_at=utcnow()))


def _refresh_modalities(session: Session, study: DicomStudy) -> None:
    found = session.scalars(select(DicomSeries.modality).where(
        DicomSeries.study_pk == study.id).distinct()).all()
    study.modalities = "\\".join(sorted(m for m in found if m))[:200]


def _detach(session: Session, instance: DicomInstance) -> None:
    """Take an instance out of its series and study counts, removing what becomes empty."""
    series_pk, study_pk = instance.series_pk, instance.study_pk
    session.delete(instance)
    session.flush()
    _bump(session, DicomSeries, series_pk, num_instances=-1)
    _bump(session, DicomStudy, study_pk, num_instances=-1)
    remaining = session.scalar(select(func.count()).select_from(DicomInstance).where(
        DicomInstance.series_pk == series_pk))
    if not remaining:
        series = session.get(DicomSeries, series_pk)
        if series is not None:
            session.delete(series)
            session.flush()
        _bump(session, DicomStudy, study_pk, num_series=-1)
        study = session.get(DicomStudy, study_pk)
        if study is not None:
            session.refresh(study)
            if study.num_instances <= 0:
                patient_pk = study.patient_pk
                session.delete(study)
                session.flush()
                _bump(session, DicomPatient, patient_pk, num_studies=-1)
            else:
                _refresh_modalities(session, study)


def _index(session: Session, org_id: str, uids: tuple[str, str, str, str, str],
           values: IndexValues, instance_values: dict[str, Any], policy: DuplicatePolicy,
           research_project: str | None = None
           ) -> tuple[DicomInstance, DicomStudy, DicomSeries, str] | StoreFailure:
    sop_class, sop_uid, study_uid, series_uid, _syntax = uids
    existing = session.scalars(select(DicomInstance).where(
        DicomInstance.org_id == org_id, DicomInstance.sop_instance_uid == sop_uid)).first()
    outcome = "stored"
    if existing is not None:
        if policy is DuplicatePolicy.reject:
            return StoreFailure(FailureReason.duplicate_sop_instance,
                                f"SOP Instance {sop_uid} is already stored and duplicates are "
                                "refused", sop_class, sop_uid, study_uid)
        if policy is DuplicatePolicy.keep_first:
            study = session.get(DicomStudy, existing.study_pk)
            series = session.get(DicomSeries, existing.series_pk)
            assert study is not None and series is not None
            return existing, study, series, "kept-existing"
        _detach(session, existing)
        outcome = "overwritten"

    patient, _ = _get_or_create(
        session, DicomPatient,
        {"org_id": org_id, "patient_id": values.patient["patient_id"],
         "issuer_of_patient_id": values.patient["issuer_of_patient_id"]},
        {k: v for k, v in values.patient.items()
         if k not in ("patient_id", "issuer_of_patient_id")})
    study, new_study = _get_or_create(
        session, DicomStudy, {"org_id": org_id, "study_instance_uid": study_uid},
        {"patient_pk": patient.id, **values.study, "research_project": research_project})
    if study.research_project != research_project:
        return StoreFailure(FailureReason.cannot_understand,
                            f"Study {study_uid} is already stored "
                            + ("as a clinical study" if study.research_project is None else
                               f"for research project {study.research_project}"),
                            sop_class, sop_uid, study_uid)
    if new_study:
        _bump(session, DicomPatient, patient.id, num_studies=1)
    else:
        _fill_blanks(study, values.study)
    series, new_series = _get_or_create(
        session, DicomSeries, {"org_id": org_id, "series_instance_uid": series_uid},
        {"study_pk": study.id, **values.series})
    if series.study_pk != study.id:
        return StoreFailure(FailureReason.cannot_understand,
                            f"Series {series_uid} already belongs to another study",
                            sop_class, sop_uid, study_uid)
    if not new_series:
        _fill_blanks(series, values.series)
    instance = DicomInstance(org_id=org_id, study_pk=study.id, series_pk=series.id,
                             sop_instance_uid=sop_uid, sop_class_uid=sop_class,
                             **instance_values)
    session.add(instance)
    session.flush()
    _bump(session, DicomSeries, series.id, num_instances=1)
    _bump(session, DicomStudy, study.id, num_instances=1, num_series=1 if new_series else 0)
    if new_series:
        session.flush()
        _refresh_modalities(session, study)
    return instance, study, series, outcome


def store_instance(session: Session, blobs: BlobStore, who: Principal | str,
                   source: BinaryIO | bytes | bytearray | memoryview, *,
                   policy: DuplicatePolicy | None = None, origin: str = "",
                   study_instance_uid: str | None = None,
                   written: BlobRef | Future[BlobRef] | None = None,
                   unused: list[str] | None = None, research_project: str | None = None
                   ) -> StoredInstance | StoreFailure:
    """Store one DICOM instance for ``who`` (a caller, or an organisation id).

    ``study_instance_uid``: the study the request addressed (STOW-RS ``/studies/{uid}``);
    an instance of another study is refused. ``origin`` labels the path it came by
    (``stow-rs``, ``dimse:MODALITY1``, ``demo``) in the index and the audit trail.
    ``written``: the same bytes, put in the blob store while they arrived (or being put
    there), used as the stored file when the bytes are a Part-10 file as they are.
    ``unused``: receives the blob names written for this instance but not kept (a refused
    instance, a duplicate kept out); once the transaction has ended the caller passes them to
    :func:`discard_unreferenced`. ``research_project``: the instance is a de-identified copy
    made for that project (a new study is marked with it).
    Raises only for a refused authorisation (HTTP 403); every problem with the instance
    itself comes back as a :class:`StoreFailure`.
    """
    def refuse(failure: StoreFailure, blob: BlobRef | Future[BlobRef] | None) -> StoreFailure:
        name = _written_name(blob)
        if name is not None and unused is not None:
            unused.append(name)
        return failure

    org_id = who.org_id if isinstance(who, Principal) else who
    policy = policy or imaging_settings().duplicate_policy
    data = _spooled(source)
    try:
        received = read_instance(data)
    except InvalidInstance as exc:
        return refuse(StoreFailure(exc.reason, str(exc), exc.sop_class_uid,
                                   exc.sop_instance_uid), written)
    ids = (received.sop_class_uid, received.sop_instance_uid, received.study_instance_uid)
    if study_instance_uid is not None and received.study_instance_uid != study_instance_uid:
        return refuse(StoreFailure(
            FailureReason.dataset_does_not_match_sop_class,
            f"the instance belongs to study {received.study_instance_uid}, "
            f"not to the study {study_instance_uid} the request addressed", *ids), written)
    limit = imaging_settings().max_instance_bytes
    if received.size > limit:
        return refuse(StoreFailure(
            FailureReason.out_of_resources,
            f"the instance has {received.size} bytes; the limit is {limit}", *ids), written)
    _admit(session, who, org_id, received.study_instance_uid, origin)
    # The file goes to the blob store while the header is indexed: writing megabytes is
    # mostly waiting for the kernel, which the indexing work can use.
    writing: Future[BlobRef]
    if isinstance(written, Future) and not received.header:
        writing = written
    elif isinstance(written, BlobRef) and not received.header \
            and written.size == received.size:
        writing = Future()
        writing.set_result(written)
    else:
        writing = _WRITER.submit(blobs.put, received.chunks())
    try:
        pixel = received.pixel
        metadata = dataset_to_json(received.dataset, received.transfer_syntax_uid,
                                   pixel=(pixel.tag, pixel.vr) if pixel else None)
        values = index_values(received.dataset)
        instance_values = {**values.instance,
                           "transfer_syntax_uid": received.transfer_syntax_uid,
                           "blob_sha256": "", "size": 0, "metadata_json": metadata,
                           "source": origin[:100]}
        uids = (*ids, received.series_instance_uid, received.transfer_syntax_uid)
        with session.begin_nested():
            result = _index(session, org_id, uids, values, instance_values, policy,
                            research_project)
            if isinstance(result, StoreFailure):
                raise _Refused(result)
            try:
                blob = writing.result()
            except (BlobStoreFull, BlobTooLarge):
                raise
            except Exception as exc:  # any storage error refuses this instance only
                raise _Refused(StoreFailure(FailureReason.out_of_resources,
                                            f"the file could not be stored: {exc}",
                                            *ids)) from None
            instance = result[0]
            if result[3] != "kept-existing":
                instance.blob_sha256, instance.size = blob.sha256, blob.size
                session.flush()
            elif blob.sha256 != instance.blob_sha256 and unused is not None:
                unused.append(blob.sha256)  # the copy already stored is the one kept
    except _Refused as refused:
        return refuse(refused.failure, writing)
    except (BlobStoreFull, BlobTooLarge) as exc:
        return StoreFailure(FailureReason.out_of_resources, str(exc), *ids)
    except IntegrityError as exc:
        log.warning("instance %s not indexed: %s", received.sop_instance_uid, exc.orig)
        return refuse(StoreFailure(FailureReason.processing_failure,
                                   "the instance conflicts with one stored at the same moment; "
                                   "send it again", *ids), writing)
    finally:
        if not writing.done():
            wait([writing])
    instance, study, series, outcome = result
    if outcome != "kept-existing":
        publish(session, INSTANCE_STORED, {
            "instance_pk": instance.id, "study_instance_uid": received.study_instance_uid,
            "series_instance_uid": received.series_instance_uid,
            "sop_instance_uid": received.sop_instance_uid,
            "sop_class_uid": received.sop_class_uid, "modality": series.modality,
            "transfer_syntax_uid": received.transfer_syntax_uid,
            "blob_sha256": instance.blob_sha256, "size": instance.size, "outcome": outcome,
            "patient_id": study.patient_id}, org_id=org_id)
        _note_study_changed(session, study.id, org_id)
    return StoredInstance(instance_pk=instance.id, org_id=org_id,
                          study_instance_uid=received.study_instance_uid,
                          series_instance_uid=received.series_instance_uid,
                          sop_instance_uid=received.sop_instance_uid,
                          sop_class_uid=received.sop_class_uid,
                          transfer_syntax_uid=instance.transfer_syntax_uid,
                          blob_sha256=instance.blob_sha256, size=instance.size,
                          outcome=outcome)


def _written_name(blob: BlobRef | Future[BlobRef] | None) -> str | None:
    """The name of a blob written for an instance, once its writing has ended (None: none)."""
    if isinstance(blob, Future):
        try:
            blob = blob.result()
        except Exception:  # the store kept nothing of a failed write
            return None
    return blob.sha256 if blob is not None else None


def discard_unreferenced(db: Database, blobs: BlobStore, names: Iterable[str]) -> int:
    """Delete the blobs among ``names`` that no stored instance refers to; how many were.

    Called after the transaction that refused the instances has ended, so a copy of the
    same bytes stored in it, or stored earlier by anyone, keeps its file.
    """
    wanted = sorted(set(names))
    if not wanted:
        return 0
    with db.session() as session:
        kept = set(session.scalars(select(DicomInstance.blob_sha256).where(
            DicomInstance.blob_sha256.in_(wanted))))
    gone = [name for name in wanted if name not in kept]
    for name in gone:
        blobs.delete(name)
    return len(gone)


class _Refused(Exception):
    """Rolls the savepoint back when indexing decides to refuse the instance."""

    def __init__(self, failure: StoreFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure
