"""The demo seeder: real chest CR and mammograms in the demo hospital, idempotent."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from careplane import demo
from careplane.demo import seed
from careplane.imaging.demo import seed_imaging
from careplane.imaging.models import DicomInstance, DicomRemoteAE, DicomSeries, DicomStudy
from careplane.platform.db import Database
from careplane.security.models import Organisation
from careplane.settings import Settings


def test_demo_images_loaded_once(settings: Settings, db: Database,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the demo's organisations and users, and only the imaging domain's data (the records
    # demo's patients take most of a full seed and are tested where they belong)
    monkeypatch.setattr(demo, "SEEDERS", [seed_imaging])
    seed(settings, db)
    seed(settings, db)
    with db.session() as session:
        org = session.scalars(select(Organisation).where(
            Organisation.slug == "demo-hospital")).one()
        studies = session.scalars(select(DicomStudy).order_by(DicomStudy.patient_id)).all()
        assert {s.org_id for s in studies} == {org.id}
        by_patient = {s.patient_id: s for s in studies}
        assert set(by_patient) == {"9RG1", "P_00173", "P_00820"}
        assert by_patient["9RG1"].modalities == "CR"
        for case in ("P_00173", "P_00820"):
            assert (by_patient[case].modalities, by_patient[case].num_instances) == ("MG", 4)
        assert session.scalar(select(func.count()).select_from(DicomInstance)) == 9
        views = {(s.laterality, s.series_description)
                 for s in session.scalars(select(DicomSeries).where(
                     DicomSeries.modality == "MG"))}
        assert views == {("L", "L CC"), ("R", "R CC"), ("L", "L MLO"), ("R", "R MLO")}
        assert session.scalars(select(DicomRemoteAE.ae_title)).all() == ["DEMO-MODALITY"]
