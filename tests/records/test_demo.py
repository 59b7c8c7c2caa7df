from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from careplane.platform.db import Database
from careplane.records.demo import seed_records
from careplane.records.models import resource
from careplane.security import Role
from careplane.security.identity import create_org, create_user
from careplane.settings import Settings


def test_demo_patients_are_seeded_once(db: Database, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with db.session() as s:
        org = create_org(s, "demo-hospital", "Demo General Hospital")
        create_user(s, "nurse", "nurse-demo-pass", org=org, roles=[Role.clinician])
        org_id = org.id
    settings = Settings(env="test", data_dir=tmp_path, database_url=str(db.url),
                        job_workers=0, log_json=False)
    monkeypatch.setenv("CAREPLANE_DEMO_PATIENTS", "3")

    def patients() -> int:
        with db.session() as s:
            return s.scalar(select(func.count()).select_from(resource).where(
                resource.c.resource_type == "Patient", resource.c.org_id == org_id)) or 0

    seed_records(settings, db)
    assert patients() == 3
    seed_records(settings, db)
    assert patients() == 3
