"""Alignment chunks: right places, and mate fields exactly as ``samtools fixmate -m`` sets them."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pysam
import pytest

from careplane.genomics.align import (
    _mate_score,
    _pair_lines,
    align_chunk,
    minimap2_program,
    sam_header,
)
from careplane.genomics.fastq import FastqReader, ReadPair, read_pairs
from careplane.genomics.simulate import SimulatedDataset, parse_read_name


def _pairs(ds: SimulatedDataset, n: int) -> list[ReadPair]:
    with FastqReader(ds.r1) as r1, FastqReader(ds.r2) as r2:
        pairs = next(read_pairs(r1, r2, n))
    rng = random.Random(5)

    def junk() -> str:
        return "".join(rng.choice("ACGT") for _ in range(150))

    q = "I" * 140 + "#" * 10
    # Unalignable pairs: both mates, and each mate alone.
    pairs.append(ReadPair("junk_both", junk(), q, junk(), q))
    pairs.append(ReadPair("junk_r1", junk(), q, pairs[0].seq2, pairs[0].qual2))
    pairs.append(ReadPair("junk_r2", pairs[1].seq1, pairs[1].qual1, junk(), q))
    return pairs


def _fields(rec: pysam.AlignedSegment) -> tuple[Any, ...]:
    return (rec.query_name, rec.flag, rec.reference_name, rec.reference_start,
            rec.mapping_quality, rec.cigarstring, rec.next_reference_name,
            rec.next_reference_start, rec.template_length, rec.query_sequence,
            sorted(rec.get_tags()))


def test_mate_fields_match_samtools_fixmate(aligned: tuple[Any, Path],
                                            dataset: SimulatedDataset, tmp_path: Path) -> None:
    ref, _ = aligned
    from careplane.genomics.align import _aligner

    mm = _aligner(str(ref.mmi))
    sam = tmp_path / "chunk.sam"
    with sam.open("w") as fh:
        fh.write(sam_header(ref.contigs, "S", "test"))
        for pair in _pairs(dataset, 400):
            fh.write(_pair_lines(mm, pair, "S")[0])
    fixed = tmp_path / "fixed.bam"
    pysam.samtools.fixmate("-m", str(sam), str(fixed), catch_stdout=False)
    with pysam.AlignmentFile(str(sam)) as ours, pysam.AlignmentFile(str(fixed)) as theirs:
        a = [_fields(r) for r in ours]
        b = [_fields(r) for r in theirs]
    assert len(a) == 2 * 403
    unmapped = [f for f in a if f[1] & 0x4]
    assert len(unmapped) == 4  # both junk mates, and one of each half-junk pair
    assert a == b


_HAS_MINIMAP2 = minimap2_program() is not None
_needs_program = pytest.mark.skipif(not _HAS_MINIMAP2, reason="minimap2 is not installed")


@pytest.mark.parametrize("how", ["mappy", pytest.param("program", marks=_needs_program),
                                 pytest.param("program-pysam", marks=_needs_program)])
def test_chunk_is_sorted_and_reads_land_where_they_came_from(
        aligned: tuple[Any, Path], dataset: SimulatedDataset, tmp_path: Path, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _ = aligned
    program = minimap2_program() if how.startswith("program") else None
    if how == "program-pysam":  # no samtools program: pysam's fixmate and sort, via a file
        real_which = shutil.which
        monkeypatch.setattr(shutil, "which",
                            lambda name: None if name == "samtools" else real_which(name))
    stats = align_chunk(str(ref.mmi), ref.contigs, _pairs(dataset, 500), str(tmp_path / "c.bam"),
                        "S", program=program)
    assert stats.pairs == 503 and stats.reads_mapped == 1002
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bam"]  # no temporary file left
    last: tuple[int, int] = (-1, -1)
    placed = 0
    with pysam.AlignmentFile(stats.bam) as bam:
        assert bam.header["HD"]["SO"] == "coordinate"
        for rec in bam:
            # Pairs with no placement at all come last, as samtools sorts them.
            key = ((rec.reference_id if rec.reference_id >= 0 else 1 << 30),
                   rec.reference_start)
            assert key >= last
            last = key
            if rec.is_unmapped or rec.query_name.startswith("junk"):
                continue
            # Mate fields as samtools fixmate -m writes them, whichever way minimap2 ran.
            assert rec.is_paired and rec.has_tag("MC") and rec.has_tag("ms")
            assert rec.get_tag("RG") == "S"
            origin = parse_read_name(rec.query_name)
            assert rec.reference_name == origin.contig
            assert origin.start - 20 <= rec.reference_start + 1 <= origin.end + 20
            placed += 1
    assert placed == 1000


@_needs_program
def test_program_and_mappy_place_reads_alike(aligned: tuple[Any, Path],
                                             dataset: SimulatedDataset, tmp_path: Path) -> None:
    """The minimap2 program and mappy are the same aligner: same places, flags and CIGARs."""
    ref, _ = aligned
    pairs = _pairs(dataset, 300)

    def placed(bam: str) -> dict[tuple[str, bool], tuple[Any, ...]]:
        with pysam.AlignmentFile(bam) as fh:
            return {(r.query_name, r.is_read1): (r.flag, r.reference_start, r.cigarstring,
                                                 r.next_reference_start, r.template_length,
                                                 r.get_tag("MC") if r.has_tag("MC") else None,
                                                 r.get_tag("ms"))
                    for r in fh if not r.is_supplementary}

    by_mappy = align_chunk(str(ref.mmi), ref.contigs, pairs, str(tmp_path / "m.bam"), "S")
    by_program = align_chunk(str(ref.mmi), ref.contigs, pairs, str(tmp_path / "p.bam"), "S",
                             program=minimap2_program())
    a, b = placed(by_mappy.bam), placed(by_program.bam)
    assert len(a) == 2 * 303
    same = sum(a[k] == b.get(k) for k in a)
    assert same >= 0.99 * len(a)


def test_a_failing_minimap2_program_raises_with_its_message(
        aligned: tuple[Any, Path], dataset: SimulatedDataset, tmp_path: Path) -> None:
    ref, _ = aligned
    fake = tmp_path / "minimap2"
    fake.write_text("#!/bin/sh\necho 'index is damaged' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"minimap2 failed.*index is damaged"):
        align_chunk(str(ref.mmi), ref.contigs, _pairs(dataset, 10), str(tmp_path / "c.bam"),
                    "S", program=str(fake))
    assert not (tmp_path / "c.bam").exists()


@pytest.mark.parametrize("qual,score", [("IIII", 160), ("!!!!", 0), ("0/", 15), ("", 0)])
def test_mate_score_counts_qualities_of_15_or_more(qual: str, score: int) -> None:
    assert _mate_score(qual) == score
