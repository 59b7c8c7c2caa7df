"""Shared genomics fixtures: one small simulated dataset per test session (a second to make)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careplane.genomics.simulate import SimulatedDataset, simulate_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    """Two contigs (30 + 20 kb) at 20x: a few dozen SNVs and indels, ~3,300 read pairs."""
    return simulate_dataset(tmp_path_factory.mktemp("sim"), seed=7, length=[30_000, 20_000],
                            coverage=20, snv_rate=2e-3, indel_rate=3e-4)


@dataclass
class Recorder:
    """A stand-in for a job context that records what the pipeline reports."""

    state: dict[str, Any]
    fail_after_saves: int | None = None
    cancel_at: str | None = None

    def __post_init__(self) -> None:
        self.saves = 0
        self.lines: list[str] = []
        self.messages: list[str] = []

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        self.messages.append(message)
        self.check()

    def log(self, line: str, level: str = "info") -> None:
        self.lines.append(line)

    def check(self) -> None:
        if self.cancel_at and any(self.cancel_at in m for m in self.messages):
            from careplane.platform.jobs import JobCancelled

            raise JobCancelled("test")

    def save_state(self, **values: Any) -> None:
        self.state.update(values)
        self.saves += 1
        if self.fail_after_saves is not None and self.saves >= self.fail_after_saves:
            raise RuntimeError("simulated crash")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(state={})


def write_gz(path: Path, text: str) -> Path:
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path


@pytest.fixture(scope="session")
def aligned(dataset: SimulatedDataset, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Any, Path]:
    """The dataset's reads aligned in one chunk, duplicate-marked and indexed: (reference, BAM)."""
    import pysam

    from careplane.genomics.align import align_chunk
    from careplane.genomics.fastq import FastqReader, read_pairs
    from careplane.genomics.reference import prepare_reference

    work = tmp_path_factory.mktemp("aligned")
    ref = prepare_reference(dataset.reference, work / "index")
    with FastqReader(dataset.r1) as r1, FastqReader(dataset.r2) as r2:
        pairs = [p for chunk in read_pairs(r1, r2) for p in chunk]
    chunk = align_chunk(str(ref.mmi), ref.contigs, pairs, str(work / "chunk.bam"), "SIM")
    bam = work / "sample.bam"
    pysam.samtools.markdup(chunk.bam, str(bam), catch_stdout=False)
    pysam.samtools.index(str(bam), catch_stdout=False)
    return ref, bam
