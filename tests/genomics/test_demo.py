"""The demo seeder registers a simulated sample and queues its run, once."""

from __future__ import annotations

from careplane.genomics import service
from careplane.genomics.demo import DEMO_SAMPLE, seed_genomics
from careplane.platform.db import Database
from careplane.settings import Settings
from tests.conftest import Accounts


def test_demo_is_seeded_once(settings: Settings, db: Database, accounts: Accounts) -> None:
    org_id = accounts.org("demo-hospital")
    seed_genomics(settings, db)
    seed_genomics(settings, db)
    with db.session() as session:
        samples = service.list_samples(session, org_id=org_id)
        assert [s.name for s in samples] == [DEMO_SAMPLE]
        runs = service.list_runs(session, org_id=org_id)
        assert len(runs) == 1 and runs[0].status == "queued"
        kinds = sorted(f.kind for f in service.list_files(session, org_id=org_id))
        assert kinds == ["fasta", "fastq", "fastq"]
        assert service.list_references(session, org_id=org_id)[0].length == 100_000
