"""Regions tile each contig exactly: every base in one region, none in two."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from careplane.genomics.regions import Region, split_regions


@given(st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=50_000))
def test_regions_tile_every_contig_exactly(lengths: list[int], pieces: int,
                                           min_length: int) -> None:
    contigs = [(f"c{i}", n) for i, n in enumerate(lengths)]
    regions = split_regions(contigs, pieces, min_length=min_length)
    for name, length in contigs:
        own = [r for r in regions if r.chrom == name]
        assert own[0].start == 1 and own[-1].end == length
        for left, right in itertools.pairwise(own):
            assert right.start == left.end + 1
        assert sum(r.length for r in own) == length
    # Reference order is kept, so concatenating per-region outputs stays sorted.
    assert [r.chrom for r in regions] == sorted((r.chrom for r in regions),
                                                key=lambda c: int(c[1:]))


def test_region_text_is_what_bcftools_reads() -> None:
    assert str(Region("chr1", 1, 500)) == "chr1:1-500"


def test_pieces_are_balanced() -> None:
    regions = split_regions([("a", 1_000_000)], 8)
    assert len(regions) == 8
    assert max(r.length for r in regions) - min(r.length for r in regions) <= 1
