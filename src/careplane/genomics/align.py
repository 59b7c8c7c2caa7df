"""Paired-end alignment of one chunk of reads into a mate-fixed, coordinate-sorted BAM.

Why it exists: alignment is split into chunks of read pairs so that several processes align at
once and a crashed run resumes from the last finished chunk. Each chunk is aligned in-process
with minimap2 (through mappy, the ``sr`` preset that ``minimap2 -ax sr`` uses) and written as
SAM text with everything a variant caller and ``samtools markdup`` depend on: paired and
proper-pair flags, and the mate fields ``samtools fixmate -m`` would add (mate position and
strand, template length, MQ, MC and the ``ms`` mate score). Writing those while both mates are
at hand costs little, where a fixmate pass costs as much as the sort (the tests check that
fixmate finds nothing to change). ``samtools sort`` then orders the chunk. BWA-MEM can be
chosen instead when the ``bwa`` program is installed; its output goes through
``samtools fixmate -m`` and the same sort.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mappy
import pysam

from careplane.genomics.fastq import ReadPair, unpack_pairs

__all__ = ["ALIGNERS", "AlignStats", "align_chunk", "sam_header"]

ALIGNERS = ("minimap2", "bwa")
_COMPLEMENT = str.maketrans("ACGTNacgtnRYKMSWBDHVrykmswbdhv", "TGCANtgcanYRMKSWVHDByrmkswvhdb")
_MAX_FRAGMENT = 1000  # a pair further apart (or wrongly oriented) is not a proper pair
_aligners: dict[str, mappy.Aligner] = {}
_buffers: dict[int, mappy.ThreadBuffer] = {}


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


# Qualities below 15 do not count towards the mate score (as samtools fixmate -m counts).
_LOW_QUAL = bytes.maketrans(bytes(range(33, 48)), b"!" * 15)


def _mate_score(qual: str) -> int:
    """``ms``: the sum of the read's base qualities of 15 or more (what markdup compares)."""
    raw = qual.encode("ascii").translate(_LOW_QUAL)
    return sum(raw) - 33 * len(raw)


def _oriented(seq: str, qual: str, hit: Any) -> tuple[str, str, str]:
    """SEQ, QUAL and CIGAR as SAM stores them (reverse-complemented on the reverse strand)."""
    n = len(seq)
    if hit.strand < 0:
        seq, qual = _revcomp(seq), qual[::-1]
        lead, trail = n - hit.q_en, hit.q_st
    else:
        lead, trail = hit.q_st, n - hit.q_en
    cigar = (f"{lead}S" if lead else "") + hit.cigar_str + (f"{trail}S" if trail else "")
    return seq, qual, cigar


def _five_prime(hit: Any) -> int:
    return int(hit.r_en if hit.strand < 0 else hit.r_st)


def _pair_lines(aligner: mappy.Aligner, pair: ReadPair, rg: str) -> tuple[str, int]:
    """Both mates as SAM lines, with the mate fields ``samtools fixmate -m`` would write.

    Writing them here (RNEXT/PNEXT, TLEN between the 5' ends, mate strand and unmapped flags,
    MQ, MC and the ``ms`` mate score) saves a fixmate pass over every chunk; the tests check
    that fixmate run on this output changes nothing.
    """
    hits: list[Any] = [None, None]
    buf = _buffers.get(id(aligner))
    if buf is None:  # one scratch buffer per aligner, instead of a new one per read pair
        buf = _buffers[id(aligner)] = mappy.ThreadBuffer()
    for hit in aligner.map(pair.seq1, pair.seq2, buf=buf):
        if hit.is_primary and hits[hit.read_num - 1] is None:
            hits[hit.read_num - 1] = hit
    reads = ((pair.seq1, pair.qual1), (pair.seq2, pair.qual2))
    proper = 0x2 if hits[0] is not None and hits[1] is not None and _proper(*hits) else 0
    places: list[tuple[str, int]] = []
    for i in (0, 1):
        own, mate = hits[i], hits[1 - i]
        if own is not None:
            places.append((own.ctg, own.r_st + 1))
        elif mate is not None:  # unmapped: placed at its mate, so it sorts beside it
            places.append((mate.ctg, mate.r_st + 1))
        else:
            places.append(("*", 0))
    text = []
    for i in (0, 1):
        own, mate = hits[i], hits[1 - i]
        seq, qual = reads[i]
        flag = 0x1 | proper | (0x40 if i == 0 else 0x80)
        if mate is None:
            flag |= 0x8
        elif mate.strand < 0:
            flag |= 0x20
        rname, pos = places[i]
        mname, mpos = places[1 - i]
        rnext = "=" if mname == rname and rname != "*" else mname
        tags = [f"RG:Z:{rg}"]
        if own is None:
            flag |= 0x4
            mapq, cigar, tlen = 0, "*", 0
        else:
            if own.strand < 0:
                flag |= 0x10
            seq, qual, cigar = _oriented(seq, qual, own)
            mapq = own.mapq
            tlen = (_five_prime(mate) - _five_prime(own)
                    if mate is not None and mate.ctg == own.ctg else 0)
            tags = [f"NM:i:{own.NM}", *tags]
        if mate is not None:
            mate_seq, mate_qual = reads[1 - i]
            tags += [f"MQ:i:{mate.mapq}",
                     f"MC:Z:{_oriented(mate_seq, mate_qual, mate)[2]}"]
        elif own is not None:
            tags.append("MC:Z:*")  # fixmate names the unmapped mate's (absent) CIGAR
        tags.append(f"ms:i:{_mate_score(reads[1 - i][1])}")
        text.append(f"{pair.name}\t{flag}\t{rname}\t{pos}\t{mapq}\t{cigar}\t{rnext}\t{mpos}\t"
                    f"{tlen}\t{seq}\t{qual}\t" + "\t".join(tags) + "\n")
    return "".join(text), (hits[0] is not None) + (hits[1] is not None)


def _sort(sam: Path, out_bam: Path) -> None:
    """Sort into an uncompressed BAM: chunks are read once more, by the merge, and deleted,
    so compressing them would cost CPU twice (deflate here, inflate there) for nothing."""
    pysam.samtools.sort("-l", "0", "-m", "256M", "-T", str(out_bam.with_suffix(".tmp")),
                        "-o", str(out_bam), str(sam), catch_stdout=False)
    sam.unlink()


def align_chunk(index: str, contigs: Sequence[tuple[str, int]],
                pairs: Sequence[ReadPair] | bytes, out_bam: str, sample: str,
                aligner: str = "minimap2", fasta: str | None = None) -> AlignStats:
    """Align ``pairs`` (or a packed chunk of them) and write ``out_bam`` (mate fields set,
    coordinate-sorted)."""
    if isinstance(pairs, bytes):
        pairs = unpack_pairs(pairs)
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
    if aligner == "bwa":  # BWA leaves the mate-score tags to fixmate
        fixed = out.with_suffix(".fixmate.bam")
        pysam.samtools.fixmate("-m", "-u", str(sam), str(fixed), catch_stdout=False)
        sam.unlink()
        sam = fixed
    _sort(sam, out)
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
