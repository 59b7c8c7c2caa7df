"""Variant calling with bcftools, per region, and the gather step that makes one clean VCF.

Why it exists: ``bcftools mpileup | call`` is single-threaded, so on a whole genome it is the
slowest step; run per region (see :mod:`careplane.genomics.regions`) it uses every core. Each
region's calls are written as BCF; the gather step concatenates them in reference order,
normalises (split multi-allelic records, left-align and trim indels against the reference, as
truth comparisons require), filters and writes a bgzipped, tabix-indexed VCF.

The filter marks a call ``LowQual`` when its QUAL is under the threshold (20) *and* its
alternate allele is weakly supported: fewer than :data:`MIN_ALT_READS` high-quality reads, or
under :data:`MIN_ALT_FRACTION` of the depth. A low QUAL alone is not enough: on E. coli at 30x
every call under QUAL 20 was true and had 4 to 14 reads for its allele (QUAL is held down by
base qualities and mapping), so a plain QUAL filter only lost true calls and scored below the
unfiltered bare pipeline; the false calls on simulated data are the ones with thin allele
support, which this rule still removes. The filter is a soft one, as bcftools and GATK
conventionally apply it: marked calls stay in the file with FILTER ``LowQual`` rather than
PASS, so every consumer that honours FILTER (QC, the variant store, truth comparison) sees only
the confident calls, and nothing is lost for a user who wants to look at the rest.

bcftools runs in-process through pysam. ``pysam.bcftools`` only exists once imported by name.
The reads carry proper mate fields (``samtools fixmate``), so mpileup keeps the pairs without
``-A``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pysam
import pysam.bcftools  # the submodule is not loaded by `import pysam` alone

from careplane.genomics.regions import Region

__all__ = ["DEFAULT_MIN_QUAL", "LOW_QUAL", "MIN_ALT_FRACTION", "MIN_ALT_READS", "call_region",
           "gather_calls", "low_quality_rule"]

DEFAULT_MIN_QUAL = 20.0
MIN_ALT_READS = 4  # a call under the QUAL threshold passes with this many alternate reads...
MIN_ALT_FRACTION = 0.2  # ...making up at least this fraction of its depth
LOW_QUAL = "LowQual"  # the FILTER of calls that fail the rule above


def low_quality_rule(min_qual: float) -> str:
    """The ``bcftools filter -e`` expression of calls marked ``LowQual``."""
    return (f"QUAL<{min_qual:g} && (FORMAT/AD[0:1]<{MIN_ALT_READS} || "
            f"FORMAT/AD[0:1]/FORMAT/DP<{MIN_ALT_FRACTION:g})")


def call_region(fasta: str, bam: str, region: Region | None, out_bcf: str) -> str:
    """``bcftools mpileup -r REGION | bcftools call -mv`` for one region (or all, if None)."""
    out = Path(out_bcf)
    pileup = out.with_suffix(".pileup.bcf")
    where = ["-r", str(region)] if region is not None else []
    pysam.bcftools.mpileup("-f", fasta, *where, "-a", "FORMAT/AD,FORMAT/DP", "-Ou",
                           "-o", str(pileup), bam, catch_stdout=False)
    partial = out.with_suffix(".part.bcf")
    pysam.bcftools.call("-mv", "-Ou", "-o", str(partial), str(pileup), catch_stdout=False)
    pileup.unlink()
    partial.replace(out)
    return str(out)


def gather_calls(parts: Sequence[str], fasta: str, out_vcf_gz: str,
                 min_qual: float = DEFAULT_MIN_QUAL) -> str:
    """Concatenate region calls (in order), normalise, filter by QUAL, bgzip and index."""
    quiet = pysam.set_verbosity(1)  # bcftools' own MQ header line draws a harmless warning
    try:
        return _gather(parts, fasta, out_vcf_gz, min_qual)
    finally:
        pysam.set_verbosity(quiet)


def _gather(parts: Sequence[str], fasta: str, out_vcf_gz: str, min_qual: float) -> str:
    out = Path(out_vcf_gz)
    joined = out.with_name(out.name + ".concat.bcf")
    normed = out.with_name(out.name + ".norm.bcf")
    if len(parts) == 1:
        Path(parts[0]).replace(joined)
    else:
        pysam.bcftools.concat("--no-version", "-Ou", "-o", str(joined), *parts,
                              catch_stdout=False)
    pysam.bcftools.norm("--no-version", "-f", fasta, "-m", "-any", "-Ou", "-o", str(normed),
                        str(joined), catch_stdout=False)
    pysam.bcftools.filter("--no-version", "-s", LOW_QUAL, "-e", low_quality_rule(min_qual),
                          "-Oz", "-o", str(out),
                        str(normed), catch_stdout=False)
    pysam.tabix_index(str(out), preset="vcf", force=True)
    joined.unlink()
    normed.unlink()
    return str(out)
