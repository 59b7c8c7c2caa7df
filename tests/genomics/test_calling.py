"""Scatter/gather calling: per-region calls add up to exactly the whole-genome calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pysam

from careplane.genomics.calling import MIN_ALT_FRACTION, MIN_ALT_READS, call_region, gather_calls
from careplane.genomics.evaluate import evaluate_calls
from careplane.genomics.regions import Region
from careplane.genomics.simulate import SimulatedDataset


def _records(path: str) -> list[tuple[Any, ...]]:
    quiet = pysam.set_verbosity(0)  # an unindexed BCF makes htslib complain on open
    try:
        with pysam.VariantFile(path) as fh:
            return [(r.chrom, r.pos, r.ref, r.alts, round(r.qual or 0, 3),
                     r.samples[0]["GT"]) for r in fh]
    finally:
        pysam.set_verbosity(quiet)


def _tiling_cut_at(contigs: tuple[tuple[str, int], ...], cuts: dict[str, set[int]]
                   ) -> list[Region]:
    """Regions of each contig whose boundaries fall right after each position in ``cuts``."""
    out = []
    for chrom, length in contigs:
        start = 1
        for end in sorted(c for c in cuts.get(chrom, set()) if 1 <= c < length):
            out.append(Region(chrom, start, end))
            start = end + 1
        out.append(Region(chrom, start, length))
    return out


def test_no_variant_lost_or_repeated_at_region_boundaries(
        aligned: tuple[Any, Path], dataset: SimulatedDataset, tmp_path: Path) -> None:
    ref, bam = aligned
    whole = _records(call_region(str(ref.fasta), str(bam), None, str(tmp_path / "whole.bcf")))
    assert len(whole) >= dataset.n_snv  # the dataset's calls, not an empty comparison

    # Boundaries exactly on variants: a region ending on a variant, one starting on it, and
    # one cutting through each deletion's deleted bases.
    cuts: dict[str, set[int]] = {}
    for i, v in enumerate(dataset.variants[:36]):
        if i % 3 == 0:
            cuts.setdefault(v.contig, set()).add(v.pos)  # variant is a region's last base
        elif i % 3 == 1:
            cuts.setdefault(v.contig, set()).add(v.pos - 1)  # ... or a region's first base
        if v.kind == "del":
            cuts.setdefault(v.contig, set()).add(v.pos + len(v.ref) // 2)
    regions = _tiling_cut_at(ref.contigs, cuts)
    assert len(regions) > 20 and any(v.kind == "del" for v in dataset.variants[:36])
    parts = [call_region(str(ref.fasta), str(bam), r, str(tmp_path / f"r{i}.bcf"))
             for i, r in enumerate(regions)]
    scattered = [rec for part in parts for rec in _records(part)]
    # Same variants, same genotypes, in the same order. QUAL may differ in the last digits:
    # mpileup's per-region reference window changes rounding, not the call.
    assert [(c, p, r, a, gt) for c, p, r, a, _q, gt in scattered] == [
        (c, p, r, a, gt) for c, p, r, a, _q, gt in whole]
    for s, w in zip(scattered, whole, strict=True):
        assert abs(s[4] - w[4]) <= 1e-3 * max(1.0, w[4])
    assert len({(c, p, r, a) for c, p, r, a, *_ in scattered}) == len(scattered)


def test_gather_normalises_filters_and_indexes(
        aligned: tuple[Any, Path], dataset: SimulatedDataset, tmp_path: Path) -> None:
    ref, bam = aligned
    half = ref.contigs[0][1] // 2
    regions = [Region(ref.contigs[0][0], 1, half), Region(ref.contigs[0][0], half + 1,
                                                         ref.contigs[0][1]),
               Region(ref.contigs[1][0], 1, ref.contigs[1][1])]
    parts = [call_region(str(ref.fasta), str(bam), r, str(tmp_path / f"r{i}.bcf"))
             for i, r in enumerate(regions)]
    out = gather_calls(parts, str(ref.fasta), str(tmp_path / "calls.vcf.gz"), min_qual=20)
    assert Path(out + ".tbi").exists()
    records = _records(out)
    # A soft filter: calls under QUAL 20 whose allele has thin support stay, marked LowQual;
    # the rest pass.
    marks = _support(out)
    assert marks and all(f in (["PASS"], ["LowQual"]) for *_x, f in marks)
    for qual, alt_reads, depth, filters in marks:
        thin = alt_reads < MIN_ALT_READS or alt_reads / depth < MIN_ALT_FRACTION
        assert (filters == ["LowQual"]) == (qual < 20 and thin), (qual, alt_reads, depth)
    assert any(f == ["LowQual"] for *_x, f in marks)
    assert all(len(alts) == 1 for _c, _p, _r, alts, _q, _gt in records)  # split
    result = evaluate_calls(out, dataset.truth_vcf, dataset.reference)
    assert result.snv.f1 is not None and result.snv.f1 >= 0.97
    assert result.indel.f1 is not None and result.indel.f1 >= 0.9


def _support(vcf: str) -> list[tuple[float, int, int, list[str]]]:
    """QUAL, alternate reads, depth and FILTER of each call."""
    with pysam.VariantFile(vcf) as fh:
        sample = next(iter(fh.header.samples))
        return [(float(rec.qual), int(rec.samples[sample]["AD"][1]),
                 int(rec.samples[sample]["DP"]), list(rec.filter)) for rec in fh]
