"""The pipeline as a durable job: it succeeds, publishes, and fails cleanly on bad input."""

from __future__ import annotations

from pathlib import Path

from careplane.genomics.pipeline import PipelineSpec
from careplane.genomics.simulate import SimulatedDataset
from careplane.platform import jobs
from careplane.platform.db import Database


def _submit(db: Database, spec: PipelineSpec, out_dir: Path) -> str:
    with db.session() as session:
        job = jobs.submit(session, "careplane.genomics.tasks:pipeline",
                          {"spec": spec.to_dict(), "out_dir": str(out_dir)}, title="test")
        return job.id


def _spec(ds: SimulatedDataset, tmp_path: Path, **kw: str) -> PipelineSpec:
    return PipelineSpec(sample="S1", fastq1=kw.get("fastq1", str(ds.r1)), fastq2=str(ds.r2),
                        reference=str(ds.reference), index_dir=str(tmp_path / "index"),
                        work_dir=str(tmp_path / "work"), threads=2, chunk_pairs=2000)


def test_pipeline_job_writes_outputs(db: Database, dataset: SimulatedDataset,
                                     tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    job_id = _submit(db, _spec(dataset, tmp_path), out_dir)
    assert jobs.Worker(db).run_once()
    with db.session() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.result is not None and job.result["qc"]["read_pairs"] == dataset.read_pairs
        assert job.state["steps"] == ["align", "markdup", "call", "gather"]
        messages = [line.line for line in jobs.job_logs(session, job_id)]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "S1.bam", "S1.bam.bai", "S1.qc.json", "S1.vcf.gz", "S1.vcf.gz.tbi"]
    assert not (tmp_path / "work").exists()  # the work directory is cleaned up
    assert any("align finished" in m for m in messages)


def test_bad_input_fails_the_job_at_once_with_nothing_published(
        db: Database, dataset: SimulatedDataset, tmp_path: Path) -> None:
    bad = tmp_path / "bad_R1.fq"
    bad.write_text("@r1\nACGT\n+\nII\n")
    out_dir = tmp_path / "out"
    job_id = _submit(db, _spec(dataset, tmp_path, fastq1=str(bad)), out_dir)
    assert jobs.Worker(db).run_once()
    with db.session() as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "failed" and job.attempts == 1  # no retry for bad input
        assert job.error is not None and "bad_R1.fq line 4: quality line" in job.error
    assert not out_dir.exists() or not list(out_dir.iterdir())
