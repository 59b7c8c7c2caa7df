"""The whole pipeline on simulated reads: right answers, resumable, cancellable, and strict
about bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pysam
import pytest

from careplane.genomics.evaluate import evaluate_calls
from careplane.genomics.pipeline import InputError, PipelineSpec, run_pipeline
from careplane.genomics.simulate import SimulatedDataset
from careplane.platform.jobs import JobCancelled
from tests.genomics.conftest import Recorder, write_gz


def _spec(ds: SimulatedDataset, tmp_path: Path, **overrides: object) -> PipelineSpec:
    values: dict[str, object] = dict(
        sample="S1", fastq1=str(ds.r1), fastq2=str(ds.r2), reference=str(ds.reference),
        index_dir=str(tmp_path / "index"), work_dir=str(tmp_path / "work"), threads=2,
        chunk_pairs=1000)
    values.update(overrides)
    return PipelineSpec(**values)  # type: ignore[arg-type]


def test_pipeline_finds_the_planted_variants(dataset: SimulatedDataset, tmp_path: Path,
                                             recorder: Recorder) -> None:
    out = run_pipeline(_spec(dataset, tmp_path), recorder)
    for path in out.files().values():
        assert path.exists(), path
    # The BAM is sorted, duplicate-marked, indexed and carries the sample's read group.
    with pysam.AlignmentFile(str(out.bam)) as bam:
        assert bam.header["HD"]["SO"] == "coordinate"
        assert [rg["ID"] for rg in bam.header["RG"]] == ["S1"]  # one, not one per chunk
        assert bam.header["RG"][0]["SM"] == "S1"
        assert bam.check_index()
        first = next(bam.fetch())
        assert first.has_tag("MC") and first.has_tag("ms")  # fixmate -m ran
    with pysam.VariantFile(str(out.vcf)) as vcf:
        assert list(vcf.header.samples) == ["S1"]
    result = evaluate_calls(out.vcf, dataset.truth_vcf, dataset.reference)
    assert result.snv.f1 is not None and result.snv.f1 >= 0.97
    assert result.indel.f1 is not None and result.indel.f1 >= 0.9
    qc = json.loads(out.qc.read_text())
    assert qc["read_pairs"] == dataset.read_pairs
    assert qc["alignment"]["mapped_percent"] > 99
    assert 350 < qc["alignment"]["insert_size"]["median"] < 450  # simulated 400 +- 50
    assert 15 < qc["alignment"]["coverage"]["mean"] < 25  # simulated 20x
    assert qc["variants"]["snvs"] >= 0.97 * dataset.n_snv
    assert qc["variants"]["ti_tv"] is not None and qc["variants"]["het"] > 0
    # Progress named the reads aligned and the regions called.
    assert any("read pairs" in m for m in recorder.messages)
    assert any(m.startswith("called") and "regions" in m for m in recorder.messages)


def test_crashed_run_resumes_from_its_checkpoint(dataset: SimulatedDataset, tmp_path: Path
                                                 ) -> None:
    spec = _spec(dataset, tmp_path)
    crashing = Recorder(state={}, fail_after_saves=3)  # dies after two chunks were saved
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(spec, crashing)
    finished_chunks = dict(crashing.state["chunks"])
    assert finished_chunks and "steps" not in crashing.state
    kept = {k: Path(v["bam"]).stat().st_mtime_ns for k, v in finished_chunks.items()}

    resumed = Recorder(state=dict(crashing.state))
    out = run_pipeline(spec, resumed)
    # The chunks finished before the crash were not aligned again.
    for k, mtime in kept.items():
        assert Path(resumed.state["chunks"][k]["bam"]).stat().st_mtime_ns == mtime
    assert resumed.state["steps"] == ["align", "markdup", "call", "gather"]
    assert json.loads(out.qc.read_text())["read_pairs"] == dataset.read_pairs
    result = evaluate_calls(out.vcf, dataset.truth_vcf, dataset.reference)
    assert result.snv.f1 is not None and result.snv.f1 >= 0.97

    # A restart after the last step does no work again and gives the same calls.
    again = Recorder(state=dict(resumed.state))
    before = out.vcf.stat().st_mtime_ns
    run_pipeline(spec, again)
    assert out.vcf.stat().st_mtime_ns == before and not again.lines


def test_cancel_stops_the_run(dataset: SimulatedDataset, tmp_path: Path) -> None:
    recorder = Recorder(state={}, cancel_at="called")
    with pytest.raises(JobCancelled):
        run_pipeline(_spec(dataset, tmp_path), recorder)
    assert "gather" not in recorder.state.get("steps", [])
    assert not list((tmp_path / "work" / "result").glob("*.vcf.gz"))


def _bad_input(dataset: SimulatedDataset, tmp_path: Path, **files: Path) -> str:
    spec = _spec(dataset, tmp_path, **{k: str(v) for k, v in files.items()})
    with pytest.raises(InputError) as err:
        run_pipeline(spec, Recorder(state={}))
    assert not list((tmp_path / "work" / "result").iterdir())  # nothing published
    return str(err.value)


def test_truncated_fastq_fails_naming_the_file_and_line(dataset: SimulatedDataset,
                                                        tmp_path: Path) -> None:
    data = Path(dataset.r2).read_bytes()
    cut = tmp_path / "cut_R2.fastq.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    message = _bad_input(dataset, tmp_path, fastq2=cut)
    assert "cut_R2.fastq.gz line" in message and "truncated" in message


def test_mates_out_of_step_fail(dataset: SimulatedDataset, tmp_path: Path) -> None:
    import gzip

    with gzip.open(dataset.r2, "rt") as fh:
        lines = fh.read().splitlines(keepends=True)
    del lines[400:404]  # drop record 101 of read 2
    shifted = write_gz(tmp_path / "shift_R2.fq.gz", "".join(lines))
    message = _bad_input(dataset, tmp_path, fastq2=shifted)
    assert "shift_R2.fq.gz line 401" in message and "out of step" in message


def test_bad_quality_line_fails(dataset: SimulatedDataset, tmp_path: Path) -> None:
    import gzip

    with gzip.open(dataset.r1, "rt") as fh:
        lines = fh.read().splitlines(keepends=True)
    lines[4003] = lines[4003][5:]  # record 1001's quality line, five characters short
    bad = write_gz(tmp_path / "badq_R1.fq.gz", "".join(lines))
    message = _bad_input(dataset, tmp_path, fastq1=bad)
    assert "badq_R1.fq.gz line 4004: quality line is 145 characters, sequence is 150" in message


def test_empty_fastq_fails(dataset: SimulatedDataset, tmp_path: Path) -> None:
    empty = tmp_path / "empty_R1.fq"
    empty.write_bytes(b"")
    assert "empty_R1.fq: is empty" in _bad_input(dataset, tmp_path, fastq1=empty)


def test_wrong_reference_fails(dataset: SimulatedDataset, tmp_path: Path) -> None:
    import numpy as np

    from careplane.genomics.simulate import random_reference, write_fasta

    other = random_reference(np.random.default_rng(99), {"other": 50_000})
    ref, _ = write_fasta(other, tmp_path / "other.fa")
    message = _bad_input(dataset, tmp_path, reference=ref)
    assert "other.fa" in message and "right reference" in message


def test_malformed_reference_fails(dataset: SimulatedDataset, tmp_path: Path) -> None:
    bad = tmp_path / "ref.fa"
    bad.write_text(">chr1\nACGT\nAC GT\n")
    assert "ref.fa line 3" in _bad_input(dataset, tmp_path, reference=bad)


@pytest.mark.skipif(shutil.which("bwa") is None, reason="the bwa aligner is not installed")
def test_bwa_can_be_chosen(dataset: SimulatedDataset, tmp_path: Path, recorder: Recorder) -> None:
    out = run_pipeline(_spec(dataset, tmp_path, aligner="bwa"), recorder)
    with pysam.AlignmentFile(str(out.bam)) as bam:
        assert "bwa" in str(bam.header["PG"])
        first = next(bam.fetch())
        assert first.has_tag("MC") and first.has_tag("ms")  # fixmate -m ran on bwa's output
    result = evaluate_calls(out.vcf, dataset.truth_vcf, dataset.reference)
    assert result.snv.f1 is not None and result.snv.f1 >= 0.97


@pytest.mark.parametrize("mode", [
    "mappy",
    pytest.param("program", marks=pytest.mark.skipif(
        shutil.which("minimap2") is None, reason="the minimap2 program is not installed"))])
def test_minimap2_runs_in_process_or_as_the_program(dataset: SimulatedDataset, tmp_path: Path,
                                                    recorder: Recorder, mode: str) -> None:
    out = run_pipeline(_spec(dataset, tmp_path, minimap2=mode), recorder)
    with pysam.AlignmentFile(str(out.bam)) as bam:
        programs = [pg.get("PN", "") for pg in bam.header["PG"]]
        assert ("minimap2" in programs) == (mode == "program")
        assert [rg["ID"] for rg in bam.header["RG"]] == ["S1"]
    assert json.loads(out.qc.read_text())["read_pairs"] == dataset.read_pairs
    result = evaluate_calls(out.vcf, dataset.truth_vcf, dataset.reference)
    assert result.snv.f1 is not None and result.snv.f1 >= 0.97


def test_unknown_minimap2_mode_is_refused(dataset: SimulatedDataset, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown minimap2 mode 'fast'"):
        run_pipeline(_spec(dataset, tmp_path, minimap2="fast"), Recorder(state={}))


def test_without_the_samtools_program_pysam_merges_and_marks(
        dataset: SimulatedDataset, tmp_path: Path, recorder: Recorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import careplane.genomics.pipeline as pipeline

    real_which = shutil.which
    monkeypatch.setattr(pipeline.shutil, "which",
                        lambda name: None if name == "samtools" else real_which(name))
    out = run_pipeline(_spec(dataset, tmp_path, minimap2="mappy"), recorder)
    with pysam.AlignmentFile(str(out.bam)) as bam:
        assert "samtools markdup" in str(bam.header["PG"]) and bam.check_index()
    assert json.loads(out.qc.read_text())["read_pairs"] == dataset.read_pairs


def test_a_failing_program_in_a_step_names_itself_and_leaves_no_process(
        dataset: SimulatedDataset, tmp_path: Path) -> None:
    from careplane.genomics.pipeline import _Run

    run = _Run(_spec(dataset, tmp_path), Recorder(state={}))
    with pytest.raises(RuntimeError, match=r"sh -c failed \(3\): boom"):
        run.programs(["sh", "-c", "yes"], ["sh", "-c", "echo boom >&2; exit 3"])
    assert not list((tmp_path / "work").glob("*.log"))


def test_a_cancel_stops_a_running_program(dataset: SimulatedDataset, tmp_path: Path) -> None:
    import time

    from careplane.genomics.pipeline import _Run

    recorder = Recorder(state={}, cancel_at="stop")
    recorder.messages.append("stop")
    run = _Run(_spec(dataset, tmp_path), recorder)
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        run.programs(["sleep", "30"])
    assert time.monotonic() - started < 5
