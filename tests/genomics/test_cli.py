"""``careplane genomics run | simulate | evaluate`` from the command line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from careplane.cli import app
from careplane.genomics.simulate import SimulatedDataset, simulate_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    """300 kb at 20x (~20,000 read pairs): in chunks of 200 pairs a run lasts seconds, so an
    interruption lands mid-alignment however fast the machine (the small data set's whole
    run can end before a signal is sent)."""
    return simulate_dataset(tmp_path_factory.mktemp("long"), seed=8, length=300_000,
                            coverage=20)


def _run_args(ds: SimulatedDataset, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["genomics", "run", "--reference", str(ds.reference), "--fastq", str(ds.r1),
            str(ds.r2), "--sample", "S1", "--out", str(out), "--threads", "2",
            "--index-dir", str(tmp_path / "index"), "--chunk-pairs", "1000", *extra]


def test_run_writes_the_outputs_and_evaluate_scores_them(dataset: SimulatedDataset,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, _run_args(dataset, out, tmp_path))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["qc"]["read_pairs"] == dataset.read_pairs
    assert sorted(p.name for p in out.iterdir()) == [
        "S1.bam", "S1.bam.bai", "S1.qc.json", "S1.vcf.gz", "S1.vcf.gz.tbi"]

    scored = runner.invoke(app, ["genomics", "evaluate", "--calls", str(out / "S1.vcf.gz"),
                                 "--truth", str(dataset.truth_vcf),
                                 "--reference", str(dataset.reference)])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["snv"]["f1"] >= 0.97


def test_bad_input_exits_non_zero_naming_file_and_line(dataset: SimulatedDataset,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad_R2.fq"
    bad.write_text("@r\nACGT\nIIII\n")
    out = tmp_path / "out"
    args = _run_args(dataset, out, tmp_path)
    args[args.index(str(dataset.r2))] = str(bad)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "bad_R2.fq line 1: the last record is incomplete" in result.output
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_simulate_prints_the_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["genomics", "simulate", "--out", str(tmp_path / "sim"),
                                 "--seed", "3", "--length", "5000", "--coverage", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seed"] == 3 and Path(summary["r1"]).exists()


def _wait_for_chunks(jobs_db: Path, wanted: int) -> int:
    """Until the run's checkpoint lists ``wanted`` aligned chunks (or a minute has passed);
    how many it lists."""
    chunks = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and chunks < wanted:
        time.sleep(0.05)
        if jobs_db.exists():
            try:
                with sqlite3.connect(jobs_db) as conn:
                    row = conn.execute("SELECT state FROM job").fetchone()
                chunks = len(json.loads(row[0]).get("chunks", {})) if row else 0
            except sqlite3.Error:
                continue
    return chunks


def test_killed_run_resumes_where_it_stopped(long_dataset: SimulatedDataset,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _run_args(long_dataset, out, tmp_path)
    args[args.index("1000")] = "200"  # many small chunks, so the kill lands mid-alignment
    cmd = [sys.executable, "-m", "careplane", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    jobs_db = out / ".careplane-S1" / "jobs.db"
    chunks = _wait_for_chunks(jobs_db, 5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, pool included, dies at once
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not already finished
    assert chunks >= 5
    assert not (out / "S1.vcf.gz").exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming the interrupted run" in result.output
    assert json.loads(result.stdout)["qc"]["read_pairs"] == long_dataset.read_pairs


def _wait_for_pool_started(group: int) -> None:
    """Until every pool process of the run has started (and so ignores SIGINT)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pool = []
        for entry in os.listdir("/proc"):
            try:
                if not entry.isdigit() or os.getpgid(int(entry)) != group:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if b"spawn_main" not in fh.read():
                        continue
                with open(f"/proc/{entry}/status") as fh:
                    ignored = next(int(line.split()[1], 16) for line in fh
                                   if line.startswith("SigIgn:"))
            except (OSError, StopIteration):
                continue
            pool.append(bool(ignored & (1 << (signal.SIGINT - 1))))
        if len(pool) == 2 and all(pool):
            return
        time.sleep(0.05)
    raise AssertionError("the run's two pool processes did not start")


def test_ctrl_c_stops_the_run_promptly_and_it_resumes(long_dataset: SimulatedDataset,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = _run_args(long_dataset, out, tmp_path)
    args[args.index("1000")] = "200"  # many small chunks, so Ctrl-C lands mid-alignment
    # As a command typed at a terminal: SIGINT at its default, even when these tests run as a
    # background job, whose children inherit an ignored SIGINT (and then rightly ignore it).
    proc = subprocess.Popen([sys.executable, "-m", "careplane", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    jobs_db = out / ".careplane-S1" / "jobs.db"
    chunks = _wait_for_chunks(jobs_db, 3)
    assert chunks >= 3
    _wait_for_pool_started(proc.pid)
    # Ctrl-C on a terminal: SIGINT to every process of the foreground group, pool included.
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 130, err
    stderr = err.decode()
    assert "interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert not (out / "S1.vcf.gz").exists()
    with sqlite3.connect(jobs_db) as conn:
        status, state = conn.execute("SELECT status, state FROM job").fetchone()
    assert status == "queued" and len(json.loads(state)["chunks"]) >= 3  # checkpoint kept

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming the interrupted run" in result.output
    assert json.loads(result.stdout)["qc"]["read_pairs"] == long_dataset.read_pairs
