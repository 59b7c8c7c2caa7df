from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from careplane.platform.db import Database
from careplane.records.cli import records_app
from careplane.records.maintenance import analyze, reindex
from careplane.records.models import INDEX_TABLES, idx_compartment, resource
from tests.records.conftest import Fhir, observation, patient


def _index_rows(db: Database) -> int:
    with db.session() as s:
        return sum(s.scalar(select(func.count()).select_from(t)) or 0
                   for t in (*INDEX_TABLES.values(), idx_compartment))


def test_reindex_rebuilds_lost_index_rows(fhir: Fhir, db: Database) -> None:
    pid = fhir.create(patient("Rebuilt"))["id"]
    oid = fhir.create(observation(f"Patient/{pid}"))["id"]
    gone = fhir.create(patient("Gone"))["id"]
    fhir.delete(f"Patient/{gone}")
    before = _index_rows(db)
    with db.session() as s:  # as if the parameters had changed since they were written
        for table in (*INDEX_TABLES.values(), idx_compartment):
            s.execute(delete(table))
        s.execute(resource.update().values(patient_id=None))
    assert fhir.ids("Patient", {"family": "rebuilt"}) == []
    seen: list[int] = []
    result = reindex(db, batch=1, progress=seen.append)
    assert result.resources == 2 and not result.failed and seen == [1, 2]
    assert _index_rows(db) == before
    assert fhir.ids("Patient", {"family": "rebuilt"}) == [pid]
    assert fhir.ids(f"Patient/{pid}/Observation") == [oid]
    assert fhir.get(f"Observation/{oid}").status_code == 200
    with db.session() as s:
        assert s.scalar(select(resource.c.patient_id).where(resource.c.id == oid)) == pid
    analyze(db)


def test_reindex_command(db_url: str, tmp_path: Path, monkeypatch: object) -> None:
    runner = CliRunner()
    env = {"CAREPLANE_DATABASE_URL": db_url, "CAREPLANE_ENV": "test"}
    result = runner.invoke(records_app, ["reindex", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["resources"] == 0
    bad = runner.invoke(records_app, ["reindex", "--type", "Spaceship", "--data-dir",
                                      str(tmp_path)], env=env)
    assert bad.exit_code == 2 and "Spaceship" in bad.output
