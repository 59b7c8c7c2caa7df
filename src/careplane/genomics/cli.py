"""``careplane genomics``: run the pipeline on local files, simulate a dataset, score a call set.

``run`` goes through the same job system as the server (a job row in a small SQLite database
kept next to the outputs, executed by an in-process worker), so a command-line run has the
server's checkpoints: interrupt it (Ctrl-C) or let the machine crash, run the same command
again, and it resumes from the last finished chunk, region or step. The outputs appear in the
output directory only when the whole run succeeded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

__all__ = ["genomics_app"]

genomics_app = typer.Typer(no_args_is_help=True,
                           help="Genomics: FASTQ -> BAM -> VCF, simulated data, evaluation.")

TASK = "careplane.genomics.tasks:pipeline"


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"careplane: error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _fail(f"another `careplane genomics run` is writing to {directory.parent}")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _find_or_submit(db: Any, args: dict[str, Any], sample: str) -> tuple[str, bool]:
    """Resume an unfinished job with the same arguments, or queue a new one."""
    from sqlalchemy import select

    from careplane.platform import jobs

    with db.session() as session:
        # Only this command uses this database (see the lock): a "running" job is a leftover
        # of a killed process and goes back to the queue with its checkpoint.
        jobs.recover_stale(session, stale_after=timedelta(0))
        candidates = session.scalars(select(jobs.Job).where(
            jobs.Job.task == TASK,
            jobs.Job.status.in_([jobs.JobStatus.queued.value, jobs.JobStatus.cancelled.value]))
            .order_by(jobs.Job.created_at.desc())).all()
        for job in candidates:
            if job.args == args:
                if job.status == jobs.JobStatus.cancelled.value:
                    jobs.retry(session, job)
                job.run_after = job.created_at  # due now, whatever backoff it had
                return job.id, bool(job.state)
        job = jobs.submit(session, TASK, args, title=f"genomics pipeline: {sample}",
                          max_attempts=3)
        return job.id, False


def _follow(db: Any, job_id: str, show_bar: bool) -> Any:
    """Show progress until the job finishes; return the finished job."""
    from careplane.platform import jobs

    last_log = 0
    bar_cm = typer.progressbar(length=1000, label="starting", file=sys.stderr,
                               show_eta=True) if show_bar else contextlib.nullcontext()
    shown = 0
    with bar_cm as bar:
        while True:
            with db.session() as session:
                job = jobs.get_job(session, job_id)
                logs = list(jobs.job_logs(session, job_id, after=last_log))
            if logs:
                last_log = logs[-1].id
            if bar is not None:
                done = int(job.progress_done or 0)
                bar.label = (job.progress_message or job.status)[:48].ljust(48)
                if done > shown:
                    bar.update(done - shown)
                    shown = done
            else:
                for line in logs:
                    typer.echo(f"{line.at:%H:%M:%S} {line.line}", err=True)
            if jobs.JobStatus(job.status).finished:
                return job
            time.sleep(0.2)


@genomics_app.command("run")
def run_command(
    reference: Annotated[Path, typer.Option("--reference", help="reference FASTA (.fa/.fa.gz)")],
    fastq: Annotated[tuple[Path, Path], typer.Option("--fastq", help="read 1 and read 2 FASTQ")],
    sample: Annotated[str, typer.Option("--sample", help="sample name (file names, VCF column)")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    threads: Annotated[int, typer.Option("--threads", min=1, max=256)] = 2,
    aligner: Annotated[str, typer.Option("--aligner", help="minimap2 or bwa")] = "minimap2",
    minimap2: Annotated[str, typer.Option(
        "--minimap2", help="how minimap2 runs: auto (the minimap2 program when installed, "
        "else in-process through mappy), program or mappy")] = "auto",
    index_dir: Annotated[Path | None, typer.Option(
        "--index-dir", help="where the reference indexes are kept (default: a per-user cache)")]
    = None,
    min_qual: Annotated[float, typer.Option("--min-qual", min=0)] = 20.0,
    chunk_pairs: Annotated[int, typer.Option("--chunk-pairs", min=100)] = 50_000,
    bam_level: Annotated[int, typer.Option("--bam-level", min=0, max=9,
                                           help="BAM compression level")] = 1,
    keep_work: Annotated[bool, typer.Option("--keep-work", help="keep the work directory")]
    = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="local (a process pool) or ray (Ray tasks; the cluster extra)")]
    = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray cluster to join (default: a private local Ray instance)")]
    = None,
) -> None:
    """Align, mark duplicates, call and filter: writes OUT/SAMPLE.bam(.bai), SAMPLE.vcf.gz(.tbi)
    and SAMPLE.qc.json, then prints the QC summary as JSON."""
    from careplane.genomics.pipeline import PipelineSpec
    from careplane.genomics.reference import default_index_dir
    from careplane.platform.db import Database
    from careplane.platform.jobs import Worker

    for path in (reference, *fastq):
        if not path.is_file():
            _fail(f"{path}: no such file")
    if not sample or "/" in sample or sample.startswith("."):
        _fail(f"sample name {sample!r} is not usable")
    out = out.resolve()
    state_dir = out / f".careplane-{sample}"
    with _exclusive(state_dir):
        spec = PipelineSpec(
            sample=sample, fastq1=str(fastq[0].resolve()), fastq2=str(fastq[1].resolve()),
            reference=str(reference.resolve()),
            index_dir=str((index_dir or default_index_dir(reference)).resolve()),
            work_dir=str(state_dir / "work"), threads=threads, aligner=aligner, minimap2=minimap2,
            min_qual=min_qual, chunk_pairs=chunk_pairs, bam_level=bam_level,
            executor=executor, ray_address=ray_address,
            names={str(fastq[0].resolve()): str(fastq[0]), str(fastq[1].resolve()):
                   str(fastq[1]), str(reference.resolve()): str(reference)})
        args = {"spec": spec.to_dict(), "out_dir": str(out), "keep_work": keep_work}
        db = Database(f"sqlite:///{state_dir / 'jobs.db'}")
        _job_tables(db)
        job_id, resuming = _find_or_submit(db, args, sample)
        if resuming:
            typer.echo(f"resuming the interrupted run in {state_dir}", err=True)
        worker = Worker(db, poll=0.1, heartbeat=5.0, stale_after=3600.0)
        thread = threading.Thread(target=_drain, args=(worker, job_id, db), daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            job = _follow(db, job_id, show_bar=sys.stderr.isatty())
        except KeyboardInterrupt:
            # The pipeline sees the cancel within a second, lets the units of work under way
            # finish (seconds) and keeps its checkpoint; the job goes back to the queue.
            typer.echo("\ninterrupted: stopping after the work under way", err=True)
            worker.stop()
            _join_quietly(thread)
            db.dispose()
            _fail("interrupted; run the same command again to resume", code=130)
        thread.join()
        db.dispose()
        if job.status != "succeeded":
            _fail(job.error.split("\n", 1)[0] if job.error else f"the run {job.status}")
    if not keep_work:
        shutil.rmtree(state_dir, ignore_errors=True)
    result = dict(job.result or {})
    result["wall_seconds"] = round(time.monotonic() - started, 2)
    typer.echo(json.dumps(result, indent=2))


def _join_quietly(thread: threading.Thread) -> None:
    """Wait for the run to stop; a second Ctrl-C meanwhile does not cut the wait short (the
    run would be left half-stopped), it is only acknowledged."""
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            typer.echo("still stopping: the work under way is being finished", err=True)


def _job_tables(db: Any) -> None:
    """Create the job system's tables in this run's private SQLite database.

    Only the jobs, their log and the event outbox (``jobs.submit`` publishes) are needed here;
    creating them from the models takes milliseconds where migrating every domain's schema
    takes seconds, and an existing database from an older version stays usable for resuming.
    """
    from careplane.platform import events, jobs  # noqa: F401 - registers the tables
    from careplane.platform.db import Base

    Base.metadata.create_all(db.engine, tables=[Base.metadata.tables[name] for name in
                                                ("job", "job_log", "event_outbox")])


def _drain(worker: Any, job_id: str, db: Any) -> None:
    """Run jobs until ours has finished (or the worker is stopped)."""
    from careplane.platform import jobs

    while not worker.stopping.is_set():
        ran = worker.run_once()
        with db.session() as session:
            if jobs.JobStatus(jobs.get_job(session, job_id).status).finished:
                return
        if not ran:
            worker.stopping.wait(0.1)


@genomics_app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    seed: Annotated[int, typer.Option("--seed")] = 1,
    length: Annotated[list[int] | None, typer.Option(
        "--length", help="contig length (repeat for several contigs)")] = None,
    coverage: Annotated[float, typer.Option("--coverage", min=0)] = 30.0,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="plant variants into this FASTA instead of a random one")] = None,
    read_length: Annotated[int, typer.Option("--read-length", min=1)] = 150,
    sample: Annotated[str, typer.Option("--sample")] = "SIM",
) -> None:
    """Make a seeded dataset: reference, truth VCF and paired FASTQ; prints its summary."""
    from careplane.genomics.simulate import simulate_dataset

    try:
        dataset = simulate_dataset(out, seed, length or [100_000], coverage,
                                   reference=reference, read_length=read_length, sample=sample)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(dataset.to_dict(), indent=2))


@genomics_app.command("evaluate")
def evaluate_command(
    calls: Annotated[Path, typer.Option("--calls", help="VCF to score")],
    truth: Annotated[Path, typer.Option("--truth", help="truth VCF")],
    reference: Annotated[Path, typer.Option("--reference", help="reference FASTA")],
    regions: Annotated[Path | None, typer.Option("--regions", help="BED of regions")] = None,
    all_records: Annotated[bool, typer.Option(
        "--all-records", help="count filtered calls too (default: PASS only)")] = False,
) -> None:
    """SNV and indel precision, recall and F1 of a call set against the truth, as JSON."""
    from careplane.genomics.evaluate import evaluate_calls

    for path in (calls, truth, reference):
        if not path.is_file():
            _fail(f"{path}: no such file")
    try:
        result = evaluate_calls(calls, truth, reference, regions=regions,
                                pass_only=not all_records)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result.to_dict(), indent=2))
