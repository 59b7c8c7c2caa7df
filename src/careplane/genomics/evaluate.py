"""Compare a call set VCF against a truth VCF: SNV and indel precision, recall, F1 and genotypes.

Why it exists: every change to the genomics pipeline (aligner options, caller, filters) must be
judged by the same yardstick, offline, against the truth the simulator planted. The comparison
must not punish a caller for writing a correct variant differently, so both sides are first
normalised with ``bcftools norm`` (split multi-allelic records, decompose complex records into
SNVs and indels, left-align and trim indels against the reference). Without that step a
perfectly correct indel call set scores visibly below 1.

After normalisation a call matches a truth record when CHROM, POS, REF and ALT are identical.
That is an allele match, as hap.py and vcfeval report it at their "allele" level; it does not
reconcile different haplotype-level representations of clustered variants, which the simulator
never plants (it keeps variants apart). Genotype concordance is measured among the matches by
zygosity (heterozygous vs homozygous-alternate), ignoring phase.

Conventions:

* A record counts as a call when its sample's genotype carries the ALT allele; ``0/0`` and
  ``./.`` records are ignored. A sites-only VCF (no samples) counts every record, with an
  unknown genotype that is left out of genotype concordance.
* ``pass_only`` keeps call records whose FILTER is PASS or missing (``.``); the truth is
  never filtered.
* With ``regions`` (a BED file), a variant counts only when its whole REF span lies in one
  region; the same rule applies to calls and truth so they are cut identically.
* A ratio with a zero denominator is ``None`` (undefined), never a made-up 0 or 1.
"""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pysam
import pysam.bcftools  # the submodule is not loaded by `import pysam` alone

__all__ = [
    "ClassMetrics",
    "Evaluation",
    "Regions",
    "VariantKey",
    "evaluate",
    "evaluate_calls",
    "load_variants",
    "normalise_vcf",
]

VariantClass = Literal["snv", "indel"]
Zygosity = Literal["het", "hom"]


@dataclass(frozen=True, order=True)
class VariantKey:
    """A normalised biallelic variant: what two VCFs must agree on to match."""

    chrom: str
    pos: int
    ref: str
    alt: str

    @property
    def variant_class(self) -> VariantClass | None:
        if len(self.ref) == 1 and len(self.alt) == 1:
            return "snv"
        if len(self.ref) != len(self.alt):
            return "indel"
        return None  # an MNP that bcftools did not decompose; neither class

    def __str__(self) -> str:
        return f"{self.chrom}:{self.pos}:{self.ref}>{self.alt}"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class ClassMetrics:
    """Counts for one variant class; the ratios are derived so they can never disagree."""

    tp: int
    fp: int
    fn: int
    genotype_matches: int
    genotype_compared: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def genotype_concordance(self) -> float | None:
        return _ratio(self.genotype_matches, self.genotype_compared)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "genotype_matches": self.genotype_matches,
            "genotype_compared": self.genotype_compared,
            "genotype_concordance": self.genotype_concordance,
        }


@dataclass(frozen=True)
class Evaluation:
    """The result of one comparison; ``to_dict`` is what `careplane genomics evaluate` prints."""

    snv: ClassMetrics
    indel: ClassMetrics
    calls_vcf: str
    truth_vcf: str
    reference: str
    pass_only: bool
    regions: str | None
    false_positives: tuple[VariantKey, ...]
    false_negatives: tuple[VariantKey, ...]
    genotype_mismatches: tuple[VariantKey, ...]

    @property
    def genotype_concordance(self) -> float | None:
        """Concordance over SNV and indel matches together."""
        return _ratio(
            self.snv.genotype_matches + self.indel.genotype_matches,
            self.snv.genotype_compared + self.indel.genotype_compared,
        )

    def to_dict(self, include_sites: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls_vcf": self.calls_vcf,
            "truth_vcf": self.truth_vcf,
            "reference": self.reference,
            "pass_only": self.pass_only,
            "regions": self.regions,
            "snv": self.snv.to_dict(),
            "indel": self.indel.to_dict(),
            "genotype_concordance": self.genotype_concordance,
        }
        if include_sites:
            out["false_positives"] = [str(k) for k in self.false_positives]
            out["false_negatives"] = [str(k) for k in self.false_negatives]
            out["genotype_mismatches"] = [str(k) for k in self.genotype_mismatches]
        return out


class Regions:
    """Merged BED intervals with a containment test (0-based, half-open, as BED is)."""

    def __init__(self, intervals: Iterable[tuple[str, int, int]]) -> None:
        by_chrom: dict[str, list[tuple[int, int]]] = {}
        for chrom, start, end in intervals:
            if end > start:
                by_chrom.setdefault(chrom, []).append((start, end))
        self._starts: dict[str, list[int]] = {}
        self._ends: dict[str, list[int]] = {}
        for chrom, spans in by_chrom.items():
            spans.sort()
            merged: list[list[int]] = []
            for start, end in spans:
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self._starts[chrom] = [s for s, _ in merged]
            self._ends[chrom] = [e for _, e in merged]

    @classmethod
    def from_bed(cls, path: str | Path) -> Regions:
        intervals: list[tuple[str, int, int]] = []
        with Path(path).open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                intervals.append((fields[0], int(fields[1]), int(fields[2])))
        return cls(intervals)

    def contains(self, chrom: str, start: int, end: int) -> bool:
        """Whether [start, end) lies inside one merged interval."""
        starts = self._starts.get(chrom)
        if not starts:
            return False
        i = bisect.bisect_right(starts, start) - 1
        return i >= 0 and end <= self._ends[chrom][i]


def normalise_vcf(vcf: str | Path, reference: str | Path, out: str | Path) -> Path:
    """``bcftools norm``: atomise, split multi-allelics, left-align and trim; plain VCF output
    (plain, so that reading it back does not look for an index it does not need).

    A REF that disagrees with the reference is kept with a warning (``-c w``) rather than
    aborting the run: such a call simply fails to match and is counted as a false positive.
    """
    target = Path(out)
    pysam.bcftools.norm(
        "-f", str(reference),
        "-a", "--atom-overlaps", ".",
        "-m", "-any",
        "-c", "w",
        "--no-version",
        "-O", "v",
        "-o", str(target),
        str(vcf),
        catch_stdout=False,
    )
    return target


def _passes(record: pysam.VariantRecord) -> bool:
    keys = list(record.filter.keys())
    return not keys or keys == ["PASS"]


def _zygosity(gt: tuple[int | None, ...] | None, alt_index: int) -> Zygosity | None:
    """het/hom for the given ALT, or None when the genotype does not carry it."""
    if not gt:
        return None
    called = [a for a in gt if a is not None]
    n_alt = sum(1 for a in called if a == alt_index)
    if n_alt == 0:
        return None
    return "hom" if n_alt == len(called) else "het"


def load_variants(
    vcf: str | Path,
    *,
    sample: str | None = None,
    pass_only: bool = False,
    regions: Regions | None = None,
) -> dict[VariantKey, Zygosity | None]:
    """Read a (normalised) VCF into {variant: zygosity} for one sample.

    The first sample is used when ``sample`` is None. Symbolic and spanning-deletion (``*``)
    alleles are skipped: they cannot be compared by sequence.
    """
    out: dict[VariantKey, Zygosity | None] = {}
    with pysam.VariantFile(str(vcf)) as fh:
        samples = list(fh.header.samples)
        if sample is not None and sample not in samples:
            raise ValueError(f"sample {sample!r} not in {vcf} (has {samples})")
        chosen = sample if sample is not None else (samples[0] if samples else None)
        for rec in fh:
            if pass_only and not _passes(rec):
                continue
            ref = (rec.ref or "").upper()
            gt = rec.samples[chosen]["GT"] if chosen is not None else None
            for alt_index, alt in enumerate(rec.alts or (), start=1):
                if alt in ("*", ".") or alt.startswith("<") or "[" in alt or "]" in alt:
                    continue
                if chosen is not None:
                    zyg = _zygosity(gt, alt_index)
                    if zyg is None:
                        continue
                else:
                    zyg = None
                key = VariantKey(rec.chrom, rec.pos, ref, alt.upper())
                if key.ref == key.alt or key.variant_class is None:
                    continue
                if regions is not None and not regions.contains(
                    rec.chrom, rec.pos - 1, rec.pos - 1 + len(ref)
                ):
                    continue
                # After splitting, a duplicate can only repeat a call; keep the first.
                out.setdefault(key, zyg)
    return out


def _metrics(
    truth: dict[VariantKey, Zygosity | None],
    calls: dict[VariantKey, Zygosity | None],
    cls: VariantClass,
) -> tuple[ClassMetrics, list[VariantKey], list[VariantKey], list[VariantKey]]:
    t = {k: z for k, z in truth.items() if k.variant_class == cls}
    c = {k: z for k, z in calls.items() if k.variant_class == cls}
    tp = t.keys() & c.keys()
    fps = sorted(c.keys() - t.keys())
    fns = sorted(t.keys() - c.keys())
    compared = [k for k in tp if t[k] is not None and c[k] is not None]
    mismatches = sorted(k for k in compared if t[k] != c[k])
    metrics = ClassMetrics(
        tp=len(tp),
        fp=len(fps),
        fn=len(fns),
        genotype_matches=len(compared) - len(mismatches),
        genotype_compared=len(compared),
    )
    return metrics, fps, fns, mismatches


def evaluate(
    calls_vcf: str | Path,
    truth_vcf: str | Path,
    reference: str | Path,
    *,
    regions: str | Path | None = None,
    pass_only: bool = True,
    calls_sample: str | None = None,
    truth_sample: str | None = None,
) -> Evaluation:
    """Normalise both VCFs against ``reference`` and count matches per variant class."""
    region_set = Regions.from_bed(regions) if regions is not None else None
    with tempfile.TemporaryDirectory(prefix="careplane-eval-") as tmp:
        norm_truth = normalise_vcf(truth_vcf, reference, Path(tmp) / "truth.norm.vcf")
        norm_calls = normalise_vcf(calls_vcf, reference, Path(tmp) / "calls.norm.vcf")
        truth = load_variants(norm_truth, sample=truth_sample, regions=region_set)
        calls = load_variants(
            norm_calls, sample=calls_sample, pass_only=pass_only, regions=region_set
        )
    snv, snv_fp, snv_fn, snv_gt = _metrics(truth, calls, "snv")
    indel, indel_fp, indel_fn, indel_gt = _metrics(truth, calls, "indel")
    return Evaluation(
        snv=snv,
        indel=indel,
        calls_vcf=str(calls_vcf),
        truth_vcf=str(truth_vcf),
        reference=str(reference),
        pass_only=pass_only,
        regions=str(regions) if regions is not None else None,
        false_positives=tuple(sorted(snv_fp + indel_fp)),
        false_negatives=tuple(sorted(snv_fn + indel_fn)),
        genotype_mismatches=tuple(sorted(snv_gt + indel_gt)),
    )


def evaluate_calls(
    calls_vcf: str | Path,
    truth_vcf: str | Path,
    reference: str | Path,
    *,
    regions: str | Path | None = None,
    pass_only: bool = True,
) -> Evaluation:
    """The entry `careplane genomics evaluate` calls; see :func:`evaluate` for the rules."""
    return evaluate(calls_vcf, truth_vcf, reference, regions=regions, pass_only=pass_only)
