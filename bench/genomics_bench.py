"""Genomics pipeline benchmark: careplane vs the bare command-line pipeline, same data, same run.

Data: the E. coli 536 genome shipped by Debian's ``bowtie-examples`` (4.9 Mb), with 2x150 bp
reads at 30x simulated by ``dwgsim`` (seeded; its mutation list is the truth set).

Contenders, each with the same number of threads and interleaved (A B, B A, ...) so that the
shared machine's noise falls on both alike:

* **careplane**: ``careplane genomics run`` (every FASTQ record checked, alignment in chunks
  with the minimap2 program when installed, else mappy, mate fields by ``samtools fixmate -m``,
  sort, duplicate marking, per-region calling in parallel, normalisation, the LowQual soft
  filter, bgzip, tabix and QC), started as its own process like a user would;
* **bare**: ``minimap2 -ax sr | samtools sort`` then ``bcftools mpileup -Ou | bcftools call -mv``
  (Debian's packages), the usual minimal pipeline, with no duplicate marking, normalisation,
  filtering or QC.

Reference indexes are built before timing for both. Figures: wall time (median), the ratio
careplane/bare, read bases processed per core-hour, peak resident memory of the whole process
tree (sampled every 0.1 s), and SNV/indel F1 of each call set against the truth (both
normalised the same way by :func:`careplane.genomics.evaluate.evaluate_calls`).

    .venv/bin/python bench/genomics_bench.py --repeats 3 --update-docs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ECOLI = Path("/usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- genomics-bench:start -->", "<!-- genomics-bench:end -->"


def _tree_rss(root: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            pid, ppid = int(entry), int(fields[1])
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(pid)
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed(cmd: list[str], log: Path) -> tuple[float, int, float]:
    """Run ``cmd``; return wall seconds, the peak RSS of its process tree and the CPU seconds
    (user + system) of the process and every descendant it waited for."""
    peak = 0
    with log.open("w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.1):
                peak = max(peak, _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{cmd[0]} failed ({code}); see {log}")
    return wall, peak, usage.ru_utime + usage.ru_stime


def prepare(work: Path, coverage: float, seed: int) -> dict[str, Path]:
    for tool in ("dwgsim", "minimap2", "samtools", "bcftools"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is not installed (Debian: apt-get install {tool})")
    if not ECOLI.exists():
        raise SystemExit(f"{ECOLI} is missing (Debian: apt-get install bowtie-examples)")
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "ecoli.fa"
    if not ref.exists():
        with gzip.open(ECOLI, "rb") as src, ref.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    prefix = work / f"reads_{coverage:g}x_{seed}"
    r1, r2 = Path(f"{prefix}.bwa.read1.fastq.gz"), Path(f"{prefix}.bwa.read2.fastq.gz")
    truth = Path(f"{prefix}.mutations.vcf")
    if not (r1.exists() and r2.exists() and truth.exists()):
        subprocess.run(["dwgsim", "-e", "0.001-0.01", "-E", "0.001-0.01", "-d", "500",
                        "-s", "50", "-C", f"{coverage:g}", "-1", "150", "-2", "150", "-y", "0",
                        "-o", "1", "-z", str(seed), str(ref), str(prefix)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mmi = work / "ecoli.sr.mmi"
    if not mmi.exists():
        subprocess.run(["minimap2", "-x", "sr", "-d", str(mmi), str(ref)], check=True,
                       stderr=subprocess.DEVNULL)
    from careplane.genomics.reference import prepare_reference

    prepare_reference(ref, work / "careplane-index")
    if not Path(f"{ref}.fai").exists():
        subprocess.run(["samtools", "faidx", str(ref)], check=True)
    return {"ref": ref, "r1": r1, "r2": r2, "truth": truth, "mmi": mmi,
            "index": work / "careplane-index"}


def run_careplane(files: dict[str, Path], out: Path, threads: int
                  ) -> tuple[float, int, float, Path]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "careplane", "genomics", "run", "--reference", str(files["ref"]),
           "--fastq", str(files["r1"]), str(files["r2"]), "--sample", "EC", "--out", str(out),
           "--threads", str(threads), "--index-dir", str(files["index"])]
    out.mkdir(parents=True)
    wall, peak, cpu = timed(cmd, out.parent / f"{out.name}.log")
    return wall, peak, cpu, out / "EC.vcf.gz"


def run_bare(files: dict[str, Path], out: Path, threads: int) -> tuple[float, int, float, Path]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bam, vcf = out / "bare.bam", out / "bare.vcf.gz"
    script = (f"set -euo pipefail; "
              f"minimap2 -t {threads} -ax sr {files['mmi']} {files['r1']} {files['r2']} "
              f"| samtools sort -@ {threads} -o {bam} - ; "
              f"bcftools mpileup -f {files['ref']} -Ou {bam} | bcftools call -mv -Oz -o {vcf}")
    wall, peak, cpu = timed(["bash", "-c", script], out.parent / f"{out.name}.log")
    return wall, peak, cpu, vcf


def read_bases(files: dict[str, Path]) -> int:
    total = 0
    for name in ("r1", "r2"):
        with gzip.open(files[name], "rt") as fh:
            for i, line in enumerate(fh):
                if i % 4 == 1:
                    total += len(line) - 1
    return total


def score(vcf: Path, files: dict[str, Path]) -> dict[str, Any]:
    """F1 of the calls that passed the filters, and of every call in the file."""
    from careplane.genomics.evaluate import evaluate_calls

    result = evaluate_calls(vcf, files["truth"], files["ref"])
    everything = evaluate_calls(vcf, files["truth"], files["ref"], pass_only=False)
    return {"snv_f1": result.snv.f1, "indel_f1": result.indel.f1,
            "snv_precision": result.snv.precision, "snv_recall": result.snv.recall,
            "indel_precision": result.indel.precision, "indel_recall": result.indel.recall,
            "all_snv_f1": everything.snv.f1, "all_indel_f1": everything.indel.f1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--coverage", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--work", type=Path, default=Path("/tmp/careplane-genomics-bench"))
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--docs-from", type=Path,
                        help="write the docs section from a summary JSON this script printed")
    args = parser.parse_args()

    if args.docs_from:  # rewrite the section from a saved summary, without running again
        write_docs(json.loads(args.docs_from.read_text()), args)
        return
    files = prepare(args.work, args.coverage, args.seed)
    load_start = os.getloadavg()[0]
    bases = read_bases(files)
    runs: dict[str, list[dict[str, Any]]] = {"careplane": [], "bare": []}
    contenders = {"careplane": run_careplane, "bare": run_bare}
    for rep in range(args.repeats):
        order = ["careplane", "bare"] if rep % 2 == 0 else ["bare", "careplane"]
        for name in order:
            wall, peak, cpu, vcf = contenders[name](files, args.work / f"{name}-{rep}",
                                                    args.threads)
            entry = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 2**20,
                     **score(vcf, files)}
            runs[name].append(entry)
            print(f"repeat {rep + 1} {name:<9} {wall:6.1f} s  CPU {cpu:6.1f} s  "
                  f"peak {peak / 2**20:6.0f} MiB  "
                  f"SNV F1 {entry['snv_f1']:.4f}  indel F1 {entry['indel_f1']:.4f}", flush=True)

    summary: dict[str, Any] = {"read_bases": bases, "threads": args.threads,
                               "load_average_start": load_start,
                               "repeats": args.repeats, "coverage": args.coverage}
    for name, entries in runs.items():
        wall = statistics.median(e["wall_s"] for e in entries)
        summary[name] = {
            "wall_s_median": wall,
            "wall_s_all": [round(e["wall_s"], 1) for e in entries],
            "cpu_s_median": statistics.median(e["cpu_s"] for e in entries),
            "gb_per_core_hour": bases / 1e9 / (wall / 3600 * args.threads),
            "peak_rss_mb_max": max(e["peak_rss_mb"] for e in entries),
            **{k: entries[-1][k] for k in entries[-1] if k.endswith(("f1", "precision",
                                                                      "recall"))},
            "load_average": os.getloadavg()[0],
        }
    pair_ratios = [c["wall_s"] / b["wall_s"] for c, b in zip(runs["careplane"], runs["bare"],
                                                             strict=True)]
    summary["wall_ratio_median_of_pairs"] = statistics.median(pair_ratios)
    summary["wall_ratios"] = [round(r, 2) for r in pair_ratios]
    summary["wall_ratio_of_medians"] = (summary["careplane"]["wall_s_median"]
                                        / summary["bare"]["wall_s_median"])
    print(json.dumps(summary, indent=2))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.update_docs:
        write_docs(summary, args)


def write_docs(summary: dict[str, Any], args: argparse.Namespace) -> None:
    c, b = summary["careplane"], summary["bare"]

    def f1(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        START,
        "## Genomics pipeline (FASTQ -> BAM -> VCF)",
        "",
        f"E. coli 536 (4.94 Mb, Debian `bowtie-examples`), 2x150 bp at {args.coverage:g}x from "
        f"`dwgsim` (seed {args.seed}; {summary['read_bases'] / 1e6:.0f} Mb of reads), "
        f"{args.threads} threads each, {args.repeats} interleaved repeats on the shared "
        f"{os.cpu_count()}-core machine ({platform.python_version()}); medians.",
        "",
        "| pipeline | wall time (s) | CPU time (s) | Gb per core-hour | peak memory (MiB) "
        "| SNV F1 | indel F1 |",
        "|---|---|---|---|---|---|---|",
        f"| careplane `genomics run` | {c['wall_s_median']:.1f} "
        f"({', '.join(map(str, c['wall_s_all']))}) | {c['cpu_s_median']:.1f} "
        f"| {c['gb_per_core_hour']:.2f} | {c['peak_rss_mb_max']:.0f} | {f1(c['snv_f1'])} "
        f"(all calls {f1(c['all_snv_f1'])}) | {f1(c['indel_f1'])} "
        f"(all calls {f1(c['all_indel_f1'])}) |",
        f"| bare `minimap2 \\| samtools sort`, `bcftools mpileup \\| call -mv` "
        f"| {b['wall_s_median']:.1f} ({', '.join(map(str, b['wall_s_all']))}) "
        f"| {b['cpu_s_median']:.1f} | {b['gb_per_core_hour']:.2f} | {b['peak_rss_mb_max']:.0f} "
        f"| {f1(b['snv_f1'])} "
        f"| {f1(b['indel_f1'])} |",
        "",
        f"Wall-time ratio careplane/bare: **{summary['wall_ratio_median_of_pairs']:.2f}** "
        "(median of the per-repeat ratios"
        + (f" {', '.join(f'{r:.2f}' for r in summary['wall_ratios'])}"
           if summary.get("wall_ratios") else "")
        + f"; {summary['wall_ratio_of_medians']:.2f} as a ratio of medians); CPU-time ratio "
        f"{c['cpu_s_median'] / b['cpu_s_median']:.2f}. The machine was shared with other "
        f"work (load average {summary.get('load_average_start', 0):.1f} at the start, "
        f"{c.get('load_average', 0):.1f} at the end), so both pipelines got less than their "
        f"two cores: on average careplane kept {c['cpu_s_median'] / c['wall_s_median']:.2f} "
        f"cores busy and the bare pipeline {b['cpu_s_median'] / b['wall_s_median']:.2f}"
        + (" (careplane's processes got the smaller share of the contended cores, so its "
           "wall time fell further behind than its CPU time)"
           if c['cpu_s_median'] / c['wall_s_median'] < 0.8 * b['cpu_s_median']
           / b['wall_s_median'] else "")
        + ". careplane does more "
        "work in that time: duplicate marking, normalisation, the soft filter (QUAL under 20 "
        "with under 4 alternate reads or under 20% of the depth is marked `LowQual` and stays "
        "in the file; the 'all calls' F1 counts those too), tabix indexes and the QC report "
        "(`samtools stats`), plus checking every FASTQ record, `samtools fixmate -m` for the "
        "mate fields duplicate marking needs, and calling in parallel regions. Both align with "
        "the same minimap2 program (careplane runs it per chunk of 50,000 read pairs when it is "
        "installed, and mappy in-process otherwise); the bare pipeline's BAM is compressed at "
        "samtools' default level, careplane's at level 1 (`--bam-level`).",
        "",
        "Command: `.venv/bin/python bench/genomics_bench.py --repeats "
        f"{args.repeats} --update-docs` (needs Debian `bowtie-examples dwgsim minimap2 samtools "
        "bcftools`).",
        END,
    ]
    section = "\n".join(lines) + "\n"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)
    print(f"updated {DOCS}")


if __name__ == "__main__":
    main()
