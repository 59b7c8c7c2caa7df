"""Paired-end alignment of one chunk of reads into a mate-fixed, coordinate-sorted BAM.

Why it exists: alignment is split into chunks of read pairs so that several processes align at
once and a crashed run resumes from the last finished chunk. Each chunk is aligned in-process
with minimap2 (through mappy, the ``sr`` preset that ``minimap2 -ax sr`` uses) and written as
SAM text with everything a variant caller and ``samtools markdup`` depend on: paired and
proper-pair flags, and the mate fields ``samtools fixmate -m`` would add (mate position and
strand, template length, MQ, MC and the ``ms`` mate score). Writing those while both mates are
at hand costs little, where a fixmate pass costs as much as the sort (the tests check that
fixmate finds nothing to change). ``samtools sort`` then orders the chunk.

When the ``minimap2`` program is installed it aligns the chunk instead (the same aligner, with
the same ``sr`` preset): it writes SAM in C, which costs far less than building the text in
Python, and its output goes through ``samtools fixmate -m`` and the same sort, streamed from one
program to the next (with the ``samtools`` program when installed, else pysam's copy through a
file). BWA-MEM can be chosen instead when the ``bwa`` program is installed; its output takes the
same fixmate and sort.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mappy
import pysam

from careplane.genomics.fastq import ReadPair, pack_pairs, unpack_pairs

__all__ = ["ALIGNERS", "MINIMAP2_MODES", "AlignStats", "align_chunk", "minimap2_program",
           "sam_header"]

ALIGNERS = ("minimap2", "bwa")
# How minimap2 runs: the program when installed (else mappy), the program only, or mappy only.
MINIMAP2_MODES = ("auto", "program", "mappy")
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


def minimap2_program() -> str | None:
    """The installed ``minimap2`` program, if any."""
    return shutil.which("minimap2")


def _sort(sam: Path, out_bam: Path) -> None:
    """Sort into an uncompressed BAM: chunks are read once more, by the merge, and deleted,
    so compressing them would cost CPU twice (deflate here, inflate there) for nothing."""
    pysam.samtools.sort("-l", "0", "-m", "256M", "-T", str(out_bam.with_suffix(".tmp")),
                        "-o", str(out_bam), str(sam), catch_stdout=False)
    sam.unlink()


def _fix_and_sort(sam: Path, out: Path) -> None:
    """``samtools fixmate -m`` (the mate fields markdup needs), then the sort."""
    fixed = out.with_suffix(".fixmate.bam")
    pysam.samtools.fixmate("-m", "-u", str(sam), str(fixed), catch_stdout=False)
    sam.unlink()
    _sort(fixed, out)


def _count_mapped(bam: Path) -> int:
    """Primary reads that mapped (unmapped, secondary and supplementary records excluded)."""
    return int(str(pysam.samtools.view("-c", "-F", "0x904", str(bam))).strip())


def align_chunk(index: str, contigs: Sequence[tuple[str, int]],
                pairs: Sequence[ReadPair] | bytes, out_bam: str, sample: str,
                aligner: str = "minimap2", fasta: str | None = None,
                program: str | None = None) -> AlignStats:
    """Align ``pairs`` (or a packed chunk of them) and write ``out_bam`` (mate fields set,
    coordinate-sorted). ``program``: the minimap2 program to run instead of mappy."""
    out = Path(out_bam)
    if aligner == "minimap2" and program is not None:
        payload = pairs if isinstance(pairs, bytes) else pack_pairs(pairs)
        n = _minimap2_program(program, index, payload, out, sample)
        return AlignStats(pairs=n, reads_mapped=_count_mapped(out), bam=str(out))
    if isinstance(pairs, bytes):
        pairs = unpack_pairs(pairs)
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
        _sort(sam, out)
    elif aligner == "bwa":
        _bwa(fasta or index, pairs, sam, sample)
        _fix_and_sort(sam, out)  # BWA leaves the mate-score tags to fixmate
        mapped = _count_mapped(out)
    else:
        raise ValueError(f"unknown aligner {aligner!r} (choose from {', '.join(ALIGNERS)})")
    return AlignStats(pairs=len(pairs), reads_mapped=mapped, bam=str(out))


def _interleaved_fastq(payload: bytes) -> tuple[int, bytes]:
    """A packed chunk (see :func:`~careplane.genomics.fastq.read_pair_chunks`) as interleaved
    FASTQ: both mates under the same name, which minimap2's ``sr`` preset pairs up."""
    lines = payload.split(b"\n")
    names = lines[0::5]
    text = b"".join(b"@%s\n%s\n+\n%s\n@%s\n%s\n+\n%s\n" % (n, s1, q1, n, s2, q2)
                    for n, s1, q1, s2, q2 in zip(names, lines[1::5], lines[2::5], lines[3::5],
                                                 lines[4::5], strict=True))
    return len(names), text


def _failed(what: str, proc: subprocess.Popen[bytes], err: bytes) -> RuntimeError:
    return RuntimeError(f"{what} failed ({proc.returncode}): "
                        f"{err.decode(errors='replace')[-2000:]}")


def _minimap2_program(program: str, index: str, payload: bytes, out: Path, sample: str) -> int:
    """``minimap2 -ax sr`` on the chunk, through ``samtools fixmate -m`` into the sort.

    The reads go in on standard input so every chunk's @PG line is the same (the merge keeps
    one); secondary alignments are left out, as the in-process path leaves them out (variant
    calling and duplicate marking ignore them anyway).
    """
    pairs, fastq = _interleaved_fastq(payload)
    rg = f"@RG\\tID:{sample}\\tSM:{sample}\\tPL:ILLUMINA\\tLB:{sample}"
    align = [program, "-a", "-x", "sr", "--secondary=no", "-t", "1", "-R", rg, index, "-"]
    samtools = shutil.which("samtools")
    if samtools is None:  # pysam's samtools runs in this process: go through a file
        sam = out.with_suffix(".sam")
        with sam.open("wb") as fh:
            proc = subprocess.Popen(align, stdin=subprocess.PIPE, stdout=fh,
                                    stderr=subprocess.PIPE)
            _, err = proc.communicate(fastq)
        if proc.returncode != 0:
            sam.unlink(missing_ok=True)
            raise _failed("minimap2", proc, err)
        _fix_and_sort(sam, out)
        return pairs
    tmp = str(out.with_suffix(".tmp"))
    aligned_r, aligned_w = os.pipe()
    fixed_r, fixed_w = os.pipe()
    try:
        mm = subprocess.Popen(align, stdin=subprocess.PIPE, stdout=aligned_w,
                              stderr=subprocess.PIPE)
        fix = subprocess.Popen([samtools, "fixmate", "-m", "-u", "-", "-"], stdin=aligned_r,
                               stdout=fixed_w, stderr=subprocess.PIPE)
        sort = subprocess.Popen([samtools, "sort", "-l", "0", "-m", "256M", "-T", tmp, "-o",
                                 str(out), "-"], stdin=fixed_r, stderr=subprocess.PIPE)
    finally:  # each program holds its own ends of the pipes now
        for fd in (aligned_r, aligned_w, fixed_r, fixed_w):
            os.close(fd)
    mm_err = mm.communicate(fastq)[1]
    fix_err = fix.communicate()[1]
    sort_err = sort.communicate()[1]
    for what, proc, err in (("minimap2", mm, mm_err), ("samtools fixmate", fix, fix_err),
                            ("samtools sort", sort, sort_err)):
        if proc.returncode != 0:
            out.unlink(missing_ok=True)
            raise _failed(what, proc, err)
    return pairs


def _bwa(prefix: str, pairs: Sequence[ReadPair], sam: Path, sample: str) -> None:
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
