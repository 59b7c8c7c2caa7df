"""store_instance: the bytes kept unchanged, the index filled, duplicates by policy, events."""

from __future__ import annotations

import io

import pytest
from fastapi import HTTPException
from pydicom.uid import generate_uid
from sqlalchemy import select

from careplane.imaging.config import DuplicatePolicy
from careplane.imaging.models import DicomInstance, DicomPatient, DicomSeries, DicomStudy
from careplane.imaging.part10 import FailureReason
from careplane.imaging.store import (
    INSTANCE_STORED,
    STUDY_CHANGED,
    StoredInstance,
    StoreFailure,
    store_instance,
)
from careplane.platform.blobs import LocalBlobStore
from careplane.platform.db import Database
from careplane.platform.events import EventRecord
from careplane.security import Role
from careplane.security.audit import AuditRecord, verify
from tests.conftest import Accounts
from tests.imaging.conftest import data_file, make_instance


def _principal(db: Database, accounts: Accounts, *roles: Role, org: str = "org-a"):
    from careplane.security.identity import resolve_token

    account = accounts.make(f"u{len(accounts.orgs)}{org}{'-'.join(roles)}", *roles, org=org)
    with db.session() as session:
        principal = resolve_token(session, account.token, kind="bearer")
    assert principal is not None
    return principal


def test_real_chest_cr_is_kept_byte_for_byte_and_indexed(db: Database, blobs: LocalBlobStore,
                                                           accounts: Accounts) -> None:
    who = _principal(db, accounts, Role.radiologist)
    raw = data_file("RG1_J2KR.dcm")
    with db.session() as session:
        result = store_instance(session, blobs, who, io.BytesIO(raw), origin="test")
    assert isinstance(result, StoredInstance), result
    assert result.outcome == "stored"
    with blobs.open(result.blob_sha256) as fh:
        assert fh.read() == raw
    with db.session() as session:
        study = session.scalars(select(DicomStudy)).one()
        series = session.scalars(select(DicomSeries)).one()
        instance = session.scalars(select(DicomInstance)).one()
        patient = session.scalars(select(DicomPatient)).one()
    assert study.org_id == who.org_id
    assert study.study_instance_uid == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert (study.patient_id, study.patient_name) == ("9RG1", "CompressedSamples^RG1")
    assert study.patient_name_key == "COMPRESSEDSAMPLES^RG1"
    assert (study.modalities, study.num_series, study.num_instances) == ("CR", 1, 1)
    assert (series.modality, series.body_part_examined, series.num_instances) == ("CR", "CHEST", 1)
    assert (instance.rows, instance.columns, instance.transfer_syntax_uid) == \
        (1955, 1841, "1.2.840.10008.1.2.4.90")
    assert instance.size == len(raw) and instance.source == "test"
    assert patient.num_studies == 1
    assert '"7FE00010":{"vr":"OB","BulkDataURI":' in instance.metadata_json


def test_events_once_per_study_and_org_scoped(db: Database, blobs: LocalBlobStore,
                                              accounts: Accounts) -> None:
    who = _principal(db, accounts)
    study = generate_uid()
    with db.session() as session:
        for number in (1, 2, 3):
            result = store_instance(session, blobs, who,
                                    make_instance(study_uid=study, instance_number=number))
            assert result.ok
    with db.session() as session:
        events = session.scalars(select(EventRecord).order_by(EventRecord.id)).all()
    stored = [e for e in events if e.topic == INSTANCE_STORED]
    changed = [e for e in events if e.topic == STUDY_CHANGED]
    assert len(stored) == 3 and len(changed) == 1
    assert {e.org_id for e in events} == {who.org_id}
    assert changed[0].payload["num_instances"] == 3
    assert changed[0].payload["study_instance_uid"] == study
    assert changed[0].payload["modalities"] == ["OT"]


def test_write_is_authorised_and_audited(db: Database, blobs: LocalBlobStore,
                                         accounts: Accounts) -> None:
    who = _principal(db, accounts, Role.researcher)
    with db.session() as session, pytest.raises(HTTPException) as refused:
        store_instance(session, blobs, who, make_instance())
    assert refused.value.status_code == 403
    allowed = _principal(db, accounts, Role.clinician)
    study = generate_uid()
    with db.session() as session:
        for _ in range(2):
            assert store_instance(session, blobs, allowed, make_instance(study_uid=study)).ok
    with db.session() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.target_id == study)).all()
        assert len(rows) == 1 and rows[0].action == "create"
        assert rows[0].target_kind == "imaging:study"
        assert verify(session).ok
        assert session.scalar(select(DicomInstance.id).limit(1)) is not None


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_duplicate_policy(db: Database, blobs: LocalBlobStore, accounts: Accounts,
                          policy: DuplicatePolicy) -> None:
    who = _principal(db, accounts)
    sop, study = generate_uid(), generate_uid()
    first = make_instance(sop_uid=sop, study_uid=study, patient_name="First^Copy")
    second = make_instance(sop_uid=sop, study_uid=study, patient_name="Second^Copy")
    with db.session() as session:
        assert store_instance(session, blobs, who, first, policy=policy).ok
    with db.session() as session:
        result = store_instance(session, blobs, who, second, policy=policy)
    with db.session() as session:
        instances = session.scalars(select(DicomInstance)).all()
        study_row = session.scalars(select(DicomStudy)).one()
    assert len(instances) == 1 and study_row.num_instances == 1
    with blobs.open(instances[0].blob_sha256) as fh:
        kept = fh.read()
    if policy is DuplicatePolicy.reject:
        assert isinstance(result, StoreFailure)
        assert result.reason == FailureReason.duplicate_sop_instance
        assert kept == first
    elif policy is DuplicatePolicy.keep_first:
        assert isinstance(result, StoredInstance) and result.outcome == "kept-existing"
        assert kept == first
    else:
        assert isinstance(result, StoredInstance) and result.outcome == "overwritten"
        assert kept == second
        assert study_row.num_series == 1


def test_overwrite_moving_to_another_study_prunes_the_empty_one(
        db: Database, blobs: LocalBlobStore, accounts: Accounts) -> None:
    who = _principal(db, accounts)
    sop = generate_uid()
    with db.session() as session:
        assert store_instance(session, blobs, who, make_instance(sop_uid=sop)).ok
        assert store_instance(session, blobs, who, make_instance(sop_uid=sop),
                              policy=DuplicatePolicy.overwrite).ok
    with db.session() as session:
        assert len(session.scalars(select(DicomStudy)).all()) == 1
        assert len(session.scalars(select(DicomSeries)).all()) == 1
        assert session.scalars(select(DicomPatient)).one().num_studies == 1


BAD = {
    "not DICOM": (b"%PDF-1.7 not an image at all" * 20, FailureReason.cannot_understand,
                  "not a DICOM file"),
    "empty": (b"", FailureReason.cannot_understand, "empty"),
    "truncated": (data_file("RG1_J2KR.dcm")[:40000], FailureReason.cannot_understand,
                  "truncated"),
    "truncated native": (data_file("RG1_UNCR.dcm")[:2_000_000], FailureReason.cannot_understand,
                         "truncated"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_refused_with_reason_and_nothing_written(
        db: Database, blobs: LocalBlobStore, accounts: Accounts, case: str) -> None:
    who = _principal(db, accounts)
    raw, reason, words = BAD[case]
    with db.session() as session:
        result = store_instance(session, blobs, who, raw)
    assert isinstance(result, StoreFailure)
    assert result.reason == reason and words in result.message
    with db.session() as session:
        assert session.scalars(select(DicomInstance)).all() == []
        assert session.scalars(select(EventRecord)).all() == []


def test_missing_uid_and_unknown_transfer_syntax(db: Database, blobs: LocalBlobStore,
                                                 accounts: Accounts) -> None:
    import pydicom

    who = _principal(db, accounts)
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    del ds.StudyInstanceUID
    no_study = io.BytesIO()
    ds.save_as(no_study)
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    odd_syntax = io.BytesIO()
    ds.save_as(odd_syntax)
    with db.session() as session:
        missing = store_instance(session, blobs, who, no_study.getvalue())
        odd = store_instance(session, blobs, who, odd_syntax.getvalue())
        good = store_instance(session, blobs, who, make_instance())
    assert isinstance(missing, StoreFailure) and "Study Instance UID" in missing.message
    assert missing.reason == FailureReason.dataset_does_not_match_sop_class
    assert isinstance(odd, StoreFailure)
    assert odd.reason == FailureReason.transfer_syntax_not_supported
    assert good.ok


def test_dataset_without_preamble_becomes_part10(db: Database, blobs: LocalBlobStore,
                                                  accounts: Accounts) -> None:
    import pydicom

    who = _principal(db, accounts)
    raw = make_instance()
    with db.session() as session:
        result = store_instance(session, blobs, who, raw[132:])  # meta but no preamble
    assert isinstance(result, StoredInstance)
    with blobs.open(result.blob_sha256) as fh:
        stored = fh.read()
    assert stored[128:132] == b"DICM"
    assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == result.sop_instance_uid


def test_tenancy_same_uid_in_two_organisations(db: Database, blobs: LocalBlobStore,
                                               accounts: Accounts) -> None:
    a = _principal(db, accounts, org="org-a")
    b = _principal(db, accounts, org="org-b")
    raw = make_instance()
    with db.session() as session:
        assert store_instance(session, blobs, a, raw).ok
        assert store_instance(session, blobs, b, raw).ok
    with db.session() as session:
        assert {s.org_id for s in session.scalars(select(DicomStudy))} == {a.org_id, b.org_id}


def test_study_addressed_by_the_request_must_match(db: Database, blobs: LocalBlobStore,
                                                    accounts: Accounts) -> None:
    who = _principal(db, accounts)
    with db.session() as session:
        result = store_instance(session, blobs, who, make_instance(),
                                study_instance_uid=generate_uid())
    assert isinstance(result, StoreFailure) and "not to the study" in result.message
