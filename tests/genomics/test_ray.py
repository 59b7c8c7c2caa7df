"""The pipeline on a local Ray cluster gives the same BAM records and VCF as on the local
process pool (the ``cluster`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pysam
import pytest

pytest.importorskip("ray")

from careplane.genomics.pipeline import PipelineSpec, run_pipeline
from careplane.genomics.simulate import SimulatedDataset
from tests.genomics.conftest import Recorder


def _records(vcf: Path) -> list[str]:
    with pysam.VariantFile(str(vcf)) as fh:
        return [str(rec) for rec in fh]


def _reads(bam: Path) -> list[str]:
    with pysam.AlignmentFile(str(bam)) as fh:
        return [rec.to_string() for rec in fh]


def test_ray_cluster_runs_the_same_pipeline(dataset: SimulatedDataset, tmp_path: Path) -> None:
    def spec(where: str, **extra: object) -> PipelineSpec:
        return PipelineSpec(sample="S1", fastq1=str(dataset.r1), fastq2=str(dataset.r2),
                            reference=str(dataset.reference), index_dir=str(tmp_path / "index"),
                            work_dir=str(tmp_path / where), threads=2, chunk_pairs=1000,
                            **extra)  # type: ignore[arg-type]

    # On Ray, minimap2 runs in-process through mappy (the workers may lack the program).
    local = run_pipeline(spec("local", minimap2="mappy"), Recorder(state={}))
    on_ray = Recorder(state={})
    clustered = run_pipeline(spec("ray", executor="ray"), on_ray)
    # Every chunk and region went through Ray, and the outputs match the local run's.
    assert len(on_ray.state["chunks"]) == 4  # ~3,300 pairs in chunks of 1,000
    assert any(m.startswith("called") for m in on_ray.messages)
    assert _records(clustered.vcf) == _records(local.vcf)
    assert _reads(clustered.bam) == _reads(local.bam)
    assert clustered.qc_document["alignment"] == local.qc_document["alignment"]
    assert len(_records(clustered.vcf)) > 50


def test_unknown_executor_is_refused(dataset: SimulatedDataset, tmp_path: Path) -> None:
    from careplane.genomics.pipeline import InputError

    bad = PipelineSpec(sample="S1", fastq1=str(dataset.r1), fastq2=str(dataset.r2),
                       reference=str(dataset.reference), index_dir=str(tmp_path / "index"),
                       work_dir=str(tmp_path / "work"), executor="spark")
    with pytest.raises(InputError, match="unknown executor 'spark'; choose from local, ray"):
        run_pipeline(bad, Recorder(state={}))


def test_server_runs_use_ray_when_the_setting_says_so(
        client: Any, accounts: Any, db: Any, dataset: SimulatedDataset,
        monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    from careplane.platform import jobs
    from careplane.platform.jobs import ray_executor
    from careplane.security import Role
    from tests.genomics.test_routes import _register

    monkeypatch.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    monkeypatch.delenv("CAREPLANE_DATA_DIR", raising=False)
    monkeypatch.setenv("CAREPLANE_ENV", "test")
    monkeypatch.setenv("CAREPLANE_GENOMICS_EXECUTOR", "ray")
    submitted: list[str] = []
    original = ray_executor.RayExecutor.submit

    def counting(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(fn.__name__)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray_executor.RayExecutor, "submit", counting)
    nurse = accounts.make("gina", Role.clinician)
    ids = _register(client, nurse.headers, dataset)
    run = client.post("/api/genomics/runs", json=ids, headers=nurse.headers).json()
    assert jobs.Worker(db).run_once()
    done = client.get(f"/api/genomics/runs/{run['id']}", headers=nurse.headers).json()
    assert done["status"] == "succeeded", done["error"]
    # The worker's job spread its chunks and regions as Ray tasks.
    assert {"align_chunk", "call_region", "gather_calls"} <= set(submitted)
