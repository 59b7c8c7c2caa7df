"""The germline pipeline, FASTQ -> BAM -> VCF, as resumable steps over a pool of processes.

Why it exists: this is the one implementation that both the server's jobs and the
``careplane genomics run`` command execute, so they cannot drift apart. Steps, in order:

1. **align**: read both FASTQ files in lockstep (each record checked, see
   :mod:`careplane.genomics.fastq`), cut them into chunks of read pairs and align the chunks in
   parallel worker processes (each chunk comes back mate-fixed and coordinate-sorted);
2. **markdup**: merge the chunks, mark duplicates (``samtools markdup``, which writes the
   index as it goes) into the BAM (compressed at ``bam_level``, 1 by default: with the zlib
   that pysam bundles, level 6 costs about three times as long for a file about 14% smaller);
3. **call**: ``bcftools mpileup | call -mv`` per region, in parallel, while ``samtools stats``
   computes the alignment QC;
4. **gather**: concatenate the regions' calls, normalise, keep QUAL >= 20, bgzip and index;
5. **qc**: write the QC JSON.

The pieces run on a pool of local processes by default (``executor="local"``, ``threads``
processes), or as Ray tasks on a Ray cluster (``executor="ray"``, the ``cluster`` extra; see
:class:`~careplane.platform.jobs.ray_executor.RayExecutor`): the same functions either way.

After each finished unit (a chunk, a region, a step) a checkpoint is saved through the
reporter's ``save_state``; a run restarted after a crash reads the checkpoint and its files in
the work directory and continues from there. Nothing is published by this module: the outputs
are left in ``work_dir/result`` for the caller to move into place only when everything worked.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pysam

from careplane.genomics import qc
from careplane.genomics.align import ALIGNERS, MINIMAP2_MODES, align_chunk, minimap2_program
from careplane.genomics.calling import DEFAULT_MIN_QUAL, call_region, gather_calls
from careplane.genomics.fastq import FastqError, FastqReader, read_pair_chunks
from careplane.genomics.reference import Reference, ReferenceError, prepare_reference
from careplane.genomics.regions import Region, split_regions

__all__ = ["EXECUTORS", "InputError", "PipelineOutputs", "PipelineSpec", "Reporter",
           "run_pipeline"]

EXECUTORS = ("local", "ray")

# Progress is reported on one scale of 1000 so that a bar moves smoothly across the steps.
_ALIGN_END, _MARKDUP_END, _CALL_END, _TOTAL = 600.0, 650.0, 950.0, 1000.0


class InputError(ValueError):
    """Bad input that no retry can fix: the message names the file (and line) at fault."""


class Reporter(Protocol):
    """What the pipeline needs from its runner; :class:`~careplane.platform.jobs.JobContext`
    is one."""

    state: dict[str, Any]

    def progress(self, done: float, total: float | None = None, message: str = "") -> None: ...
    def log(self, line: str, level: str = "info") -> None: ...
    def check(self) -> None: ...
    def save_state(self, **values: Any) -> None: ...


class Pool(Protocol):
    """Where the pieces run: a local process pool or a
    :class:`~careplane.platform.jobs.ray_executor.RayExecutor`."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
    def __enter__(self) -> Pool: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Any: ...


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a run needs; plain values, so it travels as job arguments (``to_dict``)."""

    sample: str
    fastq1: str
    fastq2: str
    reference: str
    index_dir: str
    work_dir: str
    threads: int = 2
    aligner: str = "minimap2"
    minimap2: str = "auto"  # the minimap2 program when installed, else mappy; or "program"/"mappy"
    chunk_pairs: int = 50_000
    min_qual: float = DEFAULT_MIN_QUAL
    min_mapped_fraction: float = 0.5
    bam_level: int = 1  # zlib level of the published BAM: 1 is ~3x faster than 6, ~14% larger
    executor: str = "local"  # "local" (process pool) or "ray" (Ray tasks; cluster extra)
    ray_address: str | None = None  # Ray cluster to join; None: a private local instance
    names: dict[str, str] = field(default_factory=dict)  # path -> name shown in messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def shown(self, path: str) -> str:
        return self.names.get(path, path)


@dataclass(frozen=True)
class PipelineOutputs:
    bam: Path
    bai: Path
    vcf: Path
    tbi: Path
    qc: Path
    qc_document: dict[str, Any]

    def files(self) -> dict[str, Path]:
        return {"bam": self.bam, "bai": self.bai, "vcf": self.vcf, "tbi": self.tbi,
                "qc": self.qc}


def _check_sample_name(name: str) -> None:
    if not name or any(c in name for c in "/\\\t\n\r\0") or name.startswith("."):
        raise InputError(f"sample name {name!r} is not usable (no slashes, tabs or newlines, "
                         "and it must not start with a dot)")


class _Run:
    def __init__(self, spec: PipelineSpec, reporter: Reporter) -> None:
        self.spec = spec
        self.reporter = reporter
        self.work = Path(spec.work_dir)
        self.chunks_dir = self.work / "chunks"
        self.calls_dir = self.work / "calls"
        self.result = self.work / "result"
        for d in (self.chunks_dir, self.calls_dir, self.result):
            d.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = dict(reporter.state)
        self.started = time.monotonic()

    # -- checkpoints ---------------------------------------------------------------------

    def save(self, **values: Any) -> None:
        self.state.update(values)
        self.reporter.save_state(**values)

    def step_done(self, name: str) -> bool:
        return name in self.state.get("steps", [])

    def finish_step(self, name: str, **values: Any) -> None:
        steps = [*self.state.get("steps", []), name]
        self.save(steps=steps, **values)
        self.reporter.log(f"{name} finished after {time.monotonic() - self.started:.1f} s")

    # -- steps ----------------------------------------------------------------------------

    def reference(self, pool: Pool) -> Reference:
        try:
            ref: Reference = self.offload(pool, prepare_reference, self.spec.reference,
                                          self.spec.index_dir,
                                          self.spec.shown(self.spec.reference))
            return ref
        except ReferenceError as exc:
            raise InputError(str(exc)) from exc

    def align(self, pool: Pool, ref: Reference) -> dict[str, Any]:
        spec = self.spec
        if spec.aligner not in ALIGNERS:
            raise InputError(f"unknown aligner {spec.aligner!r}; choose from "
                             f"{', '.join(ALIGNERS)}")
        index = str(ref.bwa_index()) if spec.aligner == "bwa" else str(ref.mmi)
        program = self.minimap2_program() if spec.aligner == "minimap2" else None
        done: dict[str, dict[str, Any]] = dict(self.state.get("chunks", {}))
        # A chunk counts as done only if its file survived (the work dir may have been wiped).
        done = {k: v for k, v in done.items() if Path(v["bam"]).exists()}
        pending: dict[Future[Any], int] = {}
        size = max(1, Path(spec.fastq1).stat().st_size)
        pairs_seen = 0
        r1 = FastqReader(spec.fastq1, spec.shown(spec.fastq1))
        r2 = FastqReader(spec.fastq2, spec.shown(spec.fastq2))

        def collect(block: bool) -> None:
            if not pending:
                return
            finished, _ = wait(list(pending), timeout=1.0 if block else 0,
                               return_when=FIRST_COMPLETED)
            self.reporter.check()  # a cancel (or Ctrl-C) is seen within a second
            for fut in finished:
                i = pending.pop(fut)
                done[str(i)] = fut.result().to_dict()
            if finished:
                self.save(chunks=done, minimap2_program=program)

        try:
            with r1, r2:
                for i, (count, chunk) in enumerate(read_pair_chunks(r1, r2,
                                                                    spec.chunk_pairs)):
                    pairs_seen += count
                    if str(i) not in done:
                        out = self.chunks_dir / f"chunk{i:06d}.bam"
                        pending[pool.submit(align_chunk, index, ref.contigs, chunk, str(out),
                                            spec.sample, spec.aligner, str(ref.fasta),
                                            program)] = i
                    while len(pending) > spec.threads + 1:
                        collect(block=True)
                    collect(block=False)
                    fraction = min(1.0, r1.bytes_consumed / size)
                    self.reporter.progress(_ALIGN_END * fraction, _TOTAL,
                                           f"aligned {pairs_seen:,} read pairs")
            while pending:
                collect(block=True)
                self.reporter.check()
        except FastqError as exc:
            raise InputError(str(exc)) from exc
        pairs = sum(int(v["pairs"]) for v in done.values())
        mapped = sum(int(v["reads_mapped"]) for v in done.values())
        fraction = mapped / (2 * pairs) if pairs else 0.0
        self.reporter.log(f"aligned {pairs:,} read pairs; {100 * fraction:.2f}% of reads mapped")
        if fraction < spec.min_mapped_fraction:
            raise InputError(
                f"only {100 * fraction:.1f}% of the reads in {spec.shown(spec.fastq1)} and "
                f"{spec.shown(spec.fastq2)} map to the reference {spec.shown(spec.reference)} "
                f"(at least {100 * spec.min_mapped_fraction:.0f}% expected): is it the right "
                "reference for these reads?")
        return {"pairs": pairs, "reads_mapped": mapped,
                "bams": [done[k]["bam"] for k in sorted(done, key=int)]}

    def minimap2_program(self) -> str | None:
        """The minimap2 program to run, or None for mappy in-process.

        ``auto`` takes the program when this machine has it and the chunks run here (Ray
        workers may lack it); the choice is kept in the checkpoint so a resumed run aligns its
        remaining chunks the same way.
        """
        mode = self.spec.minimap2
        if mode not in MINIMAP2_MODES:
            raise InputError(f"unknown minimap2 mode {mode!r}; choose from "
                             f"{', '.join(MINIMAP2_MODES)}")
        if "minimap2_program" in self.state:
            chosen: str | None = self.state["minimap2_program"]
            if chosen is None or Path(chosen).exists():
                return chosen
        chosen = None
        if mode == "program" or (mode == "auto" and self.spec.executor == "local"):
            chosen = minimap2_program()
            if chosen is None and mode == "program":
                raise InputError("the minimap2 program was asked for but is not installed")
        return chosen

    def markdup(self, pool: Pool, bams: list[str]) -> Path:
        """Merge the sorted chunks and mark duplicates, then index the result.

        With two or more workers the merge streams straight into ``samtools markdup`` through
        a named pipe, both running at once in pool processes (the pipe is opened in C while
        holding the GIL, so neither end may run in this process: the pool's feeder thread
        would never get to hand the other end its work).
        """
        final = self.work / "markdup.bam"
        threads = max(1, self.spec.threads)
        options = (str(threads), self.spec.bam_level, str(self.work / "markdup.tmp"))
        samtools = shutil.which("samtools") if isinstance(pool, ProcessPoolExecutor) else None
        if samtools is not None:  # the program: a third less CPU than pysam's copy
            self.programs(
                [samtools, "merge", "-f", "-u", "-c", "-p", "-o", "-", *bams],
                [samtools, "markdup", "-@", str(threads), "--output-fmt-option",
                 f"level={self.spec.bam_level}", "--write-index", "-T", options[2], "-",
                 f"{final}##idx##{final}.bai"])
        elif len(bams) == 1:
            self.offload(pool, mark_duplicates, bams[0], str(final), *options)
        elif threads == 1 or not isinstance(pool, ProcessPoolExecutor):
            # One worker, or tasks that may land on other machines: no named pipe between them.
            merged = self.work / "merged.bam"
            self.offload(pool, merge_into, bams, str(merged))
            self.offload(pool, mark_duplicates, str(merged), str(final), *options)
            merged.unlink()
        else:
            fifo = self.work / "merged.fifo"
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
            merging = pool.submit(merge_into, bams, str(fifo))
            marking = pool.submit(mark_duplicates, str(fifo), str(final), *options)
            done, _ = wait([merging, marking], return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                _release_reader(str(fifo))  # whichever end still waits for its partner
                _release_writer(str(fifo))
            merging.result()
            marking.result()
            fifo.unlink(missing_ok=True)
        return final

    def programs(self, *commands: list[str]) -> None:
        """Run ``commands`` as a pipeline (each one's output into the next), honouring
        cancellation meanwhile; a failure names the program and ends with its message."""
        logs = [self.work / f"{Path(cmd[0]).name}-{i}.log" for i, cmd in enumerate(commands)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            source: Any = subprocess.DEVNULL
            for i, (cmd, log) in enumerate(zip(commands, logs, strict=True)):
                last = i == len(commands) - 1
                with log.open("wb") as err:
                    proc = subprocess.Popen(cmd, stdin=source, stderr=err,
                                            stdout=subprocess.DEVNULL if last
                                            else subprocess.PIPE)
                if source is not subprocess.DEVNULL:
                    source.close()  # the next program holds the pipe now
                source = proc.stdout
                procs.append(proc)
            while any(p.poll() is None for p in procs):
                self.reporter.check()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    procs[-1].wait(timeout=1.0)
            failed = [(cmd, proc, log) for cmd, proc, log in zip(commands, procs, logs,
                                                                   strict=True)
                      if proc.returncode != 0]
            # A program stopped by a broken pipe only follows the failure of the next one.
            failed.sort(key=lambda f: f[1].returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE))
            for cmd, proc, log in failed[:1]:
                raise RuntimeError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): "
                                       f"{log.read_text(errors='replace')[-2000:]}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.unlink(missing_ok=True)

    def call(self, pool: Pool, ref: Reference, bam: Path) -> tuple[
            list[str], dict[str, Any]]:
        regions = split_regions(ref.contigs, pieces=8 * max(1, self.spec.threads))
        called: dict[str, str] = {k: v for k, v in self.state.get("called", {}).items()
                                  if Path(v).exists()}
        pending: dict[Future[Any], Region | None] = {}
        alignment_qc = self.state.get("alignment_qc")
        if alignment_qc is None:  # longest single task: start it first
            pending[pool.submit(qc.alignment_qc, str(bam), ref.length)] = None
        for i, region in enumerate(regions):
            if str(region) not in called:
                out = self.calls_dir / f"region{i:05d}.bcf"
                pending[pool.submit(call_region, str(ref.fasta), str(bam), region,
                                    str(out))] = region
        while pending:
            finished, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
            self.reporter.check()
            for fut in finished:
                which = pending.pop(fut)
                if which is None:
                    alignment_qc = fut.result()
                    self.save(alignment_qc=alignment_qc)
                else:
                    called[str(which)] = fut.result()
                    self.save(called=called)
            n = sum(1 for r in regions if str(r) in called)
            self.reporter.progress(
                _MARKDUP_END + (_CALL_END - _MARKDUP_END) * n / max(1, len(regions)), _TOTAL,
                f"called {n} of {len(regions)} regions")
        assert alignment_qc is not None
        return [called[str(r)] for r in regions], alignment_qc

    def pool(self) -> Pool:
        spec = self.spec
        if spec.executor == "local":
            ctx = multiprocessing.get_context("spawn")
            return ProcessPoolExecutor(max_workers=max(1, spec.threads), mp_context=ctx,
                                       initializer=_ignore_interrupts)
        if spec.executor == "ray":
            from careplane.platform.jobs.ray_executor import RayExecutor, ray_available

            if not ray_available():  # no retry installs it; an unreachable cluster is retried
                raise InputError("the Ray executor needs the 'cluster' extra: "
                                 "pip install 'careplane[cluster]'")
            return RayExecutor(spec.ray_address, num_cpus=max(1, spec.threads))
        raise InputError(f"unknown executor {spec.executor!r}; choose from "
                         f"{', '.join(EXECUTORS)}")

    def offload(self, pool: Pool, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func`` in the pool and wait for it, honouring cancellation meanwhile.

        htslib calls through pysam hold the GIL for their whole run; made in this process they
        would starve the worker's heartbeat thread (a long index or merge would look like a
        dead worker). In the pool they only cost this thread a wait.
        """
        future = pool.submit(func, *args)
        while True:
            done, _ = wait([future], timeout=1.0)
            if done:
                return future.result()
            self.reporter.check()

    def run(self) -> PipelineOutputs:
        spec = self.spec
        _check_sample_name(spec.sample)
        for path in (spec.fastq1, spec.fastq2):
            if not Path(path).is_file():
                raise InputError(f"{spec.shown(path)}: no such file")
        name = spec.sample
        bam_out, vcf_out = self.result / f"{name}.bam", self.result / f"{name}.vcf.gz"
        qc_out = self.result / f"{name}.qc.json"
        with self.pool() as pool:
            try:
                ref = self.reference(pool)
                if not self.step_done("align"):
                    self.finish_step("align", aligned=self.align(pool, ref))
                aligned = self.state["aligned"]
                self.reporter.progress(_ALIGN_END, _TOTAL,
                                       f"aligned {aligned['pairs']:,} read pairs")
                if not self.step_done("markdup") or not bam_out.exists():
                    self.reporter.progress(_ALIGN_END, _TOTAL, "marking duplicates")
                    marked = self.markdup(pool, aligned["bams"])
                    marked.replace(bam_out)
                    Path(f"{marked}.bai").replace(f"{bam_out}.bai")
                    self.finish_step("markdup")
                if not self.step_done("call"):
                    parts, _ = self.call(pool, ref, bam_out)
                    self.finish_step("call", parts=parts)
                if not self.step_done("gather") or not vcf_out.exists():
                    self.reporter.progress(_CALL_END, _TOTAL,
                                           "normalising and filtering the calls")
                    self.offload(pool, gather_calls, self.state["parts"], str(ref.fasta),
                                 str(vcf_out), spec.min_qual)
                    self.finish_step("gather")
                variants = self.offload(pool, qc.call_qc, str(vcf_out))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        document = {
            "sample": name,
            "reference": {"name": spec.shown(spec.reference), "length": ref.length,
                          "contigs": len(ref.contigs)},
            "aligner": spec.aligner,
            "read_pairs": self.state["aligned"]["pairs"],
            "alignment": self.state["alignment_qc"],
            "variants": variants,
            "min_qual": spec.min_qual,
        }
        qc.write_qc(qc_out, document)
        self.reporter.progress(_TOTAL, _TOTAL, "finished")
        return PipelineOutputs(bam=bam_out, bai=Path(f"{bam_out}.bai"), vcf=vcf_out,
                               tbi=Path(f"{vcf_out}.tbi"), qc=qc_out, qc_document=document)


def _ignore_interrupts() -> None:
    """Pool processes ignore SIGINT (and so do the programs they start).

    Ctrl-C on a terminal signals the whole process group. Left to themselves, the pool's
    processes would each stop with a traceback and break the pool under the running step; the
    process that owns the run turns the interrupt into a cancel instead, which stops the run
    at the next unit of work (within a second or so) and keeps its checkpoint. A pool process
    still starting up (it takes a second) has not got here yet: an interrupt then prints its
    traceback, and the run still stops and resumes the same way.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def mark_duplicates(source: str, out: str, threads: str, level: int, tmp: str) -> None:
    """``samtools markdup`` (pairs are recognised by the MC/ms tags the aligner wrote), which
    writes the BAM index as it goes (``out.bai``): no second pass over the BAM to index it."""
    try:
        pysam.samtools.markdup("-@", threads, "--output-fmt-option", f"level={level}",
                               "--write-index", "-T", tmp, source, f"{out}##idx##{out}.bai",
                               catch_stdout=False)
    except BaseException:
        _release_reader(source)
        raise


def merge_into(bams: list[str], out: str) -> None:
    """``samtools merge`` of sorted chunks into ``out`` (a file or named pipe), uncompressed.

    Every chunk carries the same @RG and @PG lines: ``-c -p`` keeps one of each (without them
    samtools renames the copies with random suffixes, one read group per chunk).
    """
    try:
        pysam.samtools.merge("-f", "-u", "-c", "-p", "-o", out, *bams, catch_stdout=False)
    except BaseException:
        _release_writer(out)
        raise


def _release_writer(fifo: str) -> None:
    """Open and close the pipe's writing end, so a reader waiting on it sees the end."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _release_reader(fifo: str) -> None:
    """Open and close the pipe's reading end, so a writer waiting on it fails instead of
    waiting forever."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


def run_pipeline(spec: PipelineSpec, reporter: Reporter) -> PipelineOutputs:
    """Run (or resume) the pipeline; outputs are left in ``work_dir/result``."""
    return _Run(spec, reporter).run()


def publish_to_directory(outputs: PipelineOutputs, out_dir: str | Path,
                         on_file: Callable[[Path], None] | None = None) -> dict[str, Path]:
    """Move finished outputs into ``out_dir``; indexes last, so an index never lacks its file."""
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    placed: dict[str, Path] = {}
    for kind in ("bam", "vcf", "qc", "bai", "tbi"):
        source = outputs.files()[kind]
        dest = target / source.name
        shutil.move(str(source), dest)
        placed[kind] = dest
        if on_file:
            on_file(dest)
    return placed
