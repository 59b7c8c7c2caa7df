"""Paired-end alignment of one chunk of reads into a mate-fixed, coordinate-sorted BAM.

Why it exists: alignment is split into chunks of read pairs so that several processes align at
once and a crashed run resumes from the last finished chunk. Each chunk is aligned in-process
with minimap2 (through mappy, the ``sr`` preset that ``minimap2 -ax sr`` uses) and written as
SAM text with the flags a variant caller depends on (paired, proper pair, mate strand); then
``samtools fixmate -m`` fills in mate coordinates, template length and the mate-score tags that
``samtools markdup`` needs, and ``samtools sort`` orders the chunk. BWA-MEM can be chosen
instead when the ``bwa`` program is installed; its output goes through the same fixmate and sort.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mappy
import pysam

from careplane.genomics.fastq import ReadPair

__all__ = ["ALIGNERS", "AlignStats", "align_chunk", "sam_header"]

ALIGNERS = ("minimap2", "bwa")
_COMPLEMENT = str.maketrans("ACGTNacgtnRYKMSWBDHVrykmswbdhv", "TGCANtgcanYRMKSWVHDByrmkswvhdb")
_MAX_FRAGMENT = 1000  # a pair further apart (or wrongly oriented) is not a proper pair
_aligners: dict[str, mappy.Aligner] = {}


@dataclass(frozen=True)
class AlignStats:
    """What one chunk produced: read pairs in, reads mapped out."""

    pairs: int
    reads_mapped: int
    bam: str

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "reads_mapped": self.reads_mapped, "bam": self.bam}


def _aligner(mmi: str) -> mappy.Aligner:
    """One loaded index per process, reused by every chunk that process aligns."""
    aligner = _aligners.get(mmi)
    if aligner is None:
        aligner = mappy.Aligner(mmi, preset="sr")
        if not aligner:
            raise RuntimeError(f"cannot load the minimap2 index {mmi}")
        _aligners[mmi] = aligner
    return aligner


def sam_header(contigs: Sequence[tuple[str, int]], sample: str, program: str) -> str:
    lines = ["@HD\tVN:1.6\tSO:unsorted"]
    lines += [f"@SQ\tSN:{name}\tLN:{length}" for name, length in contigs]
    lines.append(f"@RG\tID:{sample}\tSM:{sample}\tPL:ILLUMINA\tLB:{sample}")
    lines.append(f"@PG\tID:careplane-align\tPN:{program}")
    return "\n".join(lines) + "\n"


def _revcomp(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def _proper(h1: Any, h2: Any) -> bool:
    if h1.ctg != h2.ctg or h1.strand == h2.strand:
        return False
    fwd, rev = (h1, h2) if h1.strand > 0 else (h2, h1)
    return fwd.r_st <= rev.r_en and rev.r_en - fwd.r_st <= _MAX_FRAGMENT


def _record(name: str, flag: int, seq: str, qual: str, hit: Any, mate: Any, rg: str) -> str:
    if hit is None:
        # Unmapped: placed at its mate's position (if any) so it sorts next to it.
        rname, pos = (mate.ctg, mate.r_st + 1) if mate is not None else ("*", 0)
        return f"{name}\t{flag | 0x4}\t{rname}\t{pos}\t0\t*\t*\t0\t0\t{seq}\t{qual}\tRG:Z:{rg}\n"
    n = len(seq)
    if hit.strand < 0:
        flag |= 0x10
        seq, qual = _revcomp(seq), qual[::-1]
        lead, trail = n - hit.q_en, hit.q_st
    else:
        lead, trail = hit.q_st, n - hit.q_en
    cigar = (f"{lead}S" if lead else "") + hit.cigar_str + (f"{trail}S" if trail else "")
    return (f"{name}\t{flag}\t{hit.ctg}\t{hit.r_st + 1}\t{hit.mapq}\t{cigar}\t*\t0\t0\t"
            f"{seq}\t{qual}\tNM:i:{hit.NM}\tMD:Z:{hit.MD}\tRG:Z:{rg}\n")


def _pair_lines(aligner: mappy.Aligner, pair: ReadPair, rg: str) -> tuple[str, int]:
    h1 = h2 = None
    for hit in aligner.map(pair.seq1, pair.seq2, MD=True):
        if not hit.is_primary:
            continue
        if hit.read_num == 1 and h1 is None:
            h1 = hit
        elif hit.read_num == 2 and h2 is None:
            h2 = hit
    proper = 0x2 if h1 is not None and h2 is not None and _proper(h1, h2) else 0
    f1 = 0x1 | proper | 0x40 | (0x8 if h2 is None else 0) | (
        0x20 if h2 is not None and h2.strand < 0 else 0)
    f2 = 0x1 | proper | 0x80 | (0x8 if h1 is None else 0) | (
        0x20 if h1 is not None and h1.strand < 0 else 0)
    line1 = _record(pair.name, f1, pair.seq1, pair.qual1, h1, h2, rg)
    line2 = _record(pair.name, f2, pair.seq2, pair.qual2, h2, h1, rg)
    return line1 + line2, (h1 is not None) + (h2 is not None)


def _fixmate_and_sort(sam: Path, out_bam: Path) -> None:
    fixed = out_bam.with_suffix(".fixmate.bam")
    pysam.samtools.fixmate("-m", "-u", str(sam), str(fixed), catch_stdout=False)
    pysam.samtools.sort("-l", "1", "-m", "256M", "-T", str(out_bam.with_suffix(".tmp")),
                        "-o", str(out_bam), str(fixed), catch_stdout=False)
    fixed.unlink()
    sam.unlink()


def align_chunk(index: str, contigs: Sequence[tuple[str, int]], pairs: Sequence[ReadPair],
                out_bam: str, sample: str, aligner: str = "minimap2", fasta: str | None = None
                ) -> AlignStats:
    """Align ``pairs`` and write ``out_bam`` (mate-fixed, coordinate-sorted)."""
    out = Path(out_bam)
    sam = out.with_suffix(".sam")
    mapped = 0
    if aligner == "minimap2":
        mm = _aligner(index)
        with sam.open("w", encoding="ascii") as fh:
            fh.write(sam_header(contigs, sample, "careplane (minimap2 via mappy "
                                f"{mappy.__version__}, sr preset)"))
            for pair in pairs:
                text, n = _pair_lines(mm, pair, sample)
                mapped += n
                fh.write(text)
    elif aligner == "bwa":
        mapped = _bwa(fasta or index, pairs, sam, sample)
    else:
        raise ValueError(f"unknown aligner {aligner!r} (choose from {', '.join(ALIGNERS)})")
    _fixmate_and_sort(sam, out)
    return AlignStats(pairs=len(pairs), reads_mapped=mapped, bam=str(out))


def _bwa(prefix: str, pairs: Sequence[ReadPair], sam: Path, sample: str) -> int:
    """``bwa mem -p`` on an interleaved chunk (single-threaded: the pool gives the parallelism)."""
    fastq = sam.with_suffix(".fq")
    with fastq.open("w", encoding="ascii") as fh:
        for p in pairs:
            fh.write(f"@{p.name}/1\n{p.seq1}\n+\n{p.qual1}\n@{p.name}/2\n{p.seq2}\n+\n"
                     f"{p.qual2}\n")
    rg = f"@RG\\tID:{sample}\\tSM:{sample}\\tPL:ILLUMINA\\tLB:{sample}"
    with sam.open("wb") as out:
        proc = subprocess.run(["bwa", "mem", "-p", "-t", "1", "-R", rg, prefix, str(fastq)],
                              stdout=out, stderr=subprocess.PIPE, check=False)
    fastq.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"bwa mem failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    mapped = 0
    with pysam.AlignmentFile(str(sam), "r") as fh:
        for rec in fh:
            if not (rec.is_unmapped or rec.is_secondary or rec.is_supplementary):
                mapped += 1
    return mapped
