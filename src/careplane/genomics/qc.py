"""Quality control of a finished run: alignment figures from ``samtools stats`` and call-set
figures from the VCF, written as one JSON document per sample.

Why it exists: a VCF alone does not say whether it can be trusted. A user needs the figures a
reviewer asks for first: how many reads mapped, how many were duplicates, the insert-size
distribution (a library-preparation check), how evenly the genome is covered, and the call-set
signatures that betray artefacts (a transition/transversion ratio far from ~2 for SNVs, or a
het/hom ratio far from expectation).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pysam

__all__ = ["alignment_qc", "call_qc", "parse_samtools_stats", "write_qc"]

_TRANSITIONS = frozenset({("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")})


def parse_samtools_stats(text: str) -> dict[str, Any]:
    """The summary numbers (SN), insert-size (IS) and coverage (COV) sections of the output."""
    summary: dict[str, float] = {}
    insert_sizes: list[tuple[int, int]] = []
    coverage: list[tuple[int, int]] = []
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "SN":
            key = fields[1].rstrip(":")
            try:
                summary[key] = float(fields[2])
            except ValueError:
                continue
        elif fields[0] == "IS":
            insert_sizes.append((int(fields[1]), int(fields[2])))
        elif fields[0] == "COV":
            coverage.append((int(fields[2]), int(fields[3])))
    return {"summary": summary, "insert_sizes": insert_sizes, "coverage": coverage}


def _median_from_histogram(hist: Sequence[tuple[int, int]]) -> float | None:
    total = sum(n for _, n in hist)
    if total == 0:
        return None
    half, seen = total / 2, 0
    for value, n in hist:
        seen += n
        if seen >= half:
            return float(value)
    return None


def _samtools_stats(bam: str) -> str:
    """``samtools stats`` of the BAM: the program when installed (it reads the BAM in less
    CPU than pysam's copy), else pysam's."""
    program = shutil.which("samtools")
    if program is None:
        return str(pysam.samtools.stats(bam))
    done = subprocess.run([program, "stats", bam], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"samtools stats failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


def alignment_qc(bam: str, genome_length: int) -> dict[str, Any]:
    """Mapped %, duplicate %, insert sizes and the coverage histogram of a (marked) BAM."""
    stats = parse_samtools_stats(_samtools_stats(bam))
    sn = stats["summary"]
    total = sn.get("raw total sequences", 0.0)
    mapped = sn.get("reads mapped", 0.0)
    dups = sn.get("reads duplicated", 0.0)
    cov_hist = [(depth, n) for depth, n in stats["coverage"] if n]
    covered = sum(n for _, n in cov_hist)
    histogram = [(0, max(0, genome_length - covered)), *cov_hist]
    depth_sum = sum(d * n for d, n in histogram)

    def at_least(x: int) -> float | None:
        if not genome_length:
            return None
        return sum(n for d, n in histogram if d >= x) / genome_length

    inserts = [(size, n) for size, n in stats["insert_sizes"] if n]
    return {
        "reads_total": int(total),
        "reads_mapped": int(mapped),
        "mapped_percent": 100 * mapped / total if total else None,
        "reads_properly_paired": int(sn.get("reads properly paired", 0)),
        "reads_duplicated": int(dups),
        "duplicates_percent": 100 * dups / mapped if mapped else None,
        "bases_mapped": int(sn.get("bases mapped (cigar)", 0)),
        "error_rate": sn.get("error rate"),
        "average_quality": sn.get("average quality"),
        "insert_size": {
            "mean": sn.get("insert size average"),
            "sd": sn.get("insert size standard deviation"),
            "median": _median_from_histogram(inserts),
            "histogram": inserts,
        },
        "coverage": {
            "genome_length": genome_length,
            "mean": depth_sum / genome_length if genome_length else None,
            "at_least_1x": at_least(1),
            "at_least_10x": at_least(10),
            "at_least_20x": at_least(20),
            "histogram": histogram,
        },
    }


def call_qc(vcf: str) -> dict[str, Any]:
    """Counts by class and genotype, Ti/Tv of SNVs, het/hom ratio and QUAL/depth summaries,
    of the calls that passed the filters (the filtered ones are only counted)."""
    snv = indel = other = ti = tv = het = hom = filtered = 0
    quals: list[float] = []
    depths: list[int] = []
    quiet = pysam.set_verbosity(0)  # bcftools' own header draws a harmless MQ type warning
    with pysam.VariantFile(vcf) as fh:
        sample = next(iter(fh.header.samples), None)
        for rec in fh:
            if any(k != "PASS" for k in rec.filter):
                filtered += 1
                continue
            ref = (rec.ref or "").upper()
            alt = (rec.alts or ("",))[0].upper()
            if len(ref) == 1 and len(alt) == 1:
                snv += 1
                if (ref, alt) in _TRANSITIONS:
                    ti += 1
                else:
                    tv += 1
            elif len(ref) != len(alt):
                indel += 1
            else:
                other += 1
            if rec.qual is not None:
                quals.append(float(rec.qual))
            if sample is not None:
                call = rec.samples[sample]
                gt = [a for a in (call.get("GT") or ()) if a is not None]
                if gt and any(gt):
                    if len(set(gt)) == 1:
                        hom += 1
                    else:
                        het += 1
                dp = call.get("DP")
                if isinstance(dp, int):
                    depths.append(dp)
    pysam.set_verbosity(quiet)
    return {
        "variants": snv + indel + other,
        "filtered": filtered,
        "snvs": snv,
        "indels": indel,
        "other": other,
        "transitions": ti,
        "transversions": tv,
        "ti_tv": ti / tv if tv else None,
        "het": het,
        "hom_alt": hom,
        "het_hom_ratio": het / hom if hom else None,
        "qual_median": statistics.median(quals) if quals else None,
        "depth_median": statistics.median(depths) if depths else None,
    }


def write_qc(path: str | Path, document: dict[str, Any]) -> Path:
    """Write the QC document as stable, human-readable JSON."""
    target = Path(path)
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target
