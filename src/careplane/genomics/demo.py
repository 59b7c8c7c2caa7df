"""Demo genomics data: a simulated reference, one sample with its reads, and a queued run.

``careplane demo`` shows the whole genomics flow on a fresh install: the seeder simulates a
small dataset (seeded, so every demo gets the same one), registers it in the demo hospital and
submits a pipeline run, which the demo server's job workers then execute, so the runs page
fills in live. A second seeding finds the sample and leaves everything as it was.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy import select

from careplane.genomics import service
from careplane.genomics.models import GenomicsSample
from careplane.genomics.simulate import simulate_dataset
from careplane.platform.db import Database
from careplane.security.encryption import blob_store_for
from careplane.security.models import Organisation
from careplane.settings import Settings

__all__ = ["DEMO_SAMPLE", "seed_genomics"]

log = logging.getLogger(__name__)
DEMO_ORG = "demo-hospital"
DEMO_SAMPLE = "DEMO-001"


def _file_chunks(path: Path) -> list[bytes]:
    return [path.read_bytes()]


def seed_genomics(settings: Settings, db: Database) -> None:
    blobs = blob_store_for(settings)
    with db.session() as session:
        org = session.scalars(select(Organisation).where(Organisation.slug == DEMO_ORG)).first()
        if org is None:
            return
        if session.scalar(select(GenomicsSample.id).where(GenomicsSample.org_id == org.id,
                                                          GenomicsSample.name == DEMO_SAMPLE)):
            return
        with tempfile.TemporaryDirectory(prefix="careplane-demo-") as tmp:
            ds = simulate_dataset(tmp, seed=2024, length=[60_000, 40_000], coverage=25,
                                  sample=DEMO_SAMPLE)
            sample = service.create_sample(session, org_id=org.id, name=DEMO_SAMPLE,
                                           description="simulated: 100 kb, 2x150 bp at 25x")
            fasta = service.store_upload(session, blobs, _file_chunks(ds.reference),
                                         org_id=org.id, filename="demo-reference.fa")
            reference = service.create_reference(session, blobs, org_id=org.id,
                                                 name="demo reference (simulated)",
                                                 file_id=fasta.id)
            reads = [service.store_upload(session, blobs, _file_chunks(path), org_id=org.id,
                                          filename=path.name, sample_id=sample.id)
                     for path in (ds.r1, ds.r2)]
        service.submit_run(session, org_id=org.id, sample_id=sample.id,
                           reference_id=reference.id, fastq_ids=[r.id for r in reads],
                           data_dir=settings.data_dir)
    log.info("genomics demo: sample %s registered and its run queued", DEMO_SAMPLE)
