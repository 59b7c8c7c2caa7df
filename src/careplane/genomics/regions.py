"""Genomic regions that tile a reference exactly, for scatter/gather variant calling.

Why it exists: calling runs per region in parallel, so the regions must cover every base once:
no gap (a variant would be lost) and no overlap (a variant would be reported twice). Regions are
1-based and inclusive, as ``bcftools mpileup -r`` reads them; a caller restricted to a region
still sees every read overlapping it, so a site next to a boundary gets its full depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Region", "split_regions"]


@dataclass(frozen=True, order=True)
class Region:
    """``chrom:start-end``, 1-based, both ends included."""

    chrom: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.chrom}:{self.start}-{self.end}"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def split_regions(contigs: Sequence[tuple[str, int]], pieces: int,
                  min_length: int = 10_000) -> list[Region]:
    """Cut the contigs into about ``pieces`` regions of similar length, in reference order.

    A contig is never joined with another; regions shorter than ``min_length`` are avoided
    (except for contigs that are shorter themselves), since each region costs a process start.
    """
    total = sum(length for _, length in contigs)
    if total <= 0:
        return []
    target = max(min_length, -(-total // max(1, pieces)))
    out: list[Region] = []
    for chrom, length in contigs:
        if length <= 0:
            continue
        n = max(1, round(length / target))
        step = -(-length // n)
        start = 1
        while start <= length:
            end = min(length, start + step - 1)
            out.append(Region(chrom, start, end))
            start = end + 1
    return out
