"""The evaluator must count exactly, forgive equivalent representations, and score a real run.

A hand-built reference and truth give exact expected TP/FP/FN counts for every kind of
disagreement; the last test runs the whole offline pipeline (simulate -> minimap2 -> sort ->
bcftools) so a broken link anywhere shows up as a low F1.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import mappy
import pysam
import pysam.bcftools
import pytest

from careplane.genomics.evaluate import (
    Evaluation,
    Regions,
    evaluate,
    evaluate_calls,
)
from careplane.genomics.simulate import SimulatedDataset, simulate_dataset

CONTIG = "ctg"
# (POS, REF, ALT, GT, FILTER); REF "" means "take it from the reference".
Record = tuple[int, str, str, str, str]


def make_reference() -> str:
    rng = random.Random(2024)
    seq = list("".join(rng.choice("ACGT") for _ in range(3_000)))
    seq[1000:1009] = "GTAAAAAAC"  # a homopolymer: a 1 bp deletion can sit at 6 places
    seq[1500:1510] = "GCACACACAT"  # a dinucleotide repeat: a CA insertion can slide
    return "".join(seq)


REF = make_reference()


def base(pos: int) -> str:
    return REF[pos - 1]


def other(pos: int, k: int = 1) -> str:
    bases = [b for b in "ACGT" if b != base(pos)]
    return bases[k % 3]


TRUTH: list[Record] = [
    (200, base(200), other(200), "0|1", "PASS"),
    (400, base(400), other(400), "1|1", "PASS"),
    (600, base(600), other(600), "1|0", "PASS"),
    (800, base(800), other(800), "0|1", "PASS"),
    (1002, "TA", "T", "0|1", "PASS"),  # homopolymer deletion, left-aligned
    (1200, base(1200), other(1200), "1|1", "PASS"),
    (1509, "A", "ACA", "1|1", "PASS"),  # dinucleotide insertion, right-shifted
    (1800, base(1800), other(1800), "0|1", "PASS"),
    (2000, base(2000), other(2000), "1|1", "PASS"),
    (2200, base(2200), other(2200), "1|0", "PASS"),
    (2400, REF[2399:2403], base(2400), "0|1", "PASS"),  # 3 bp deletion
    (2600, base(2600), base(2600) + "TT", "0|1", "PASS"),  # 2 bp insertion
    (2800, base(2800), f"{other(2800, 0)},{other(2800, 1)}", "1|2", "PASS"),  # multi-allelic
]


def write_fasta(path: Path) -> Path:
    path.write_text(f">{CONTIG}\n" + "\n".join(REF[i : i + 60] for i in range(0, 3000, 60)) + "\n")
    pysam.faidx(str(path))
    return path


def write_vcf(path: Path, records: list[Record], sites_only: bool = False) -> Path:
    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID={CONTIG},length={len(REF)}>",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    ]
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
    lines.append("\t".join(columns if sites_only else [*columns, "FORMAT", "S1"]))
    for pos, ref, alt, gt, flt in sorted(records):
        assert REF[pos - 1 : pos - 1 + len(ref)] == ref, (pos, ref)
        fields = [CONTIG, str(pos), ".", ref, alt, "50", flt, "."]
        lines.append("\t".join(fields if sites_only else [*fields, "GT", gt]))
    path.write_text("\n".join(lines) + "\n")
    return path


def haplotype(records: list[Record], allele: int) -> str:
    """The sequence carrying every ALT record whose GT holds `allele`'s alt (test self-check)."""
    out, cursor = [], 0
    for pos, ref, alt, gt, _ in sorted(records):
        alts = alt.split(",")
        called = [int(a) for a in gt.replace("|", "/").split("/")]
        chosen = called[allele]
        if chosen == 0:
            continue
        out += [REF[cursor : pos - 1], alts[chosen - 1]]
        cursor = pos - 1 + len(ref)
    return "".join([*out, REF[cursor:]])


@pytest.fixture()
def ref_fa(tmp_path: Path) -> Path:
    return write_fasta(tmp_path / "ref.fa")


@pytest.fixture()
def truth_vcf(tmp_path: Path) -> Path:
    return write_vcf(tmp_path / "truth.vcf", TRUTH)


def edited_calls() -> list[Record]:
    """Every kind of disagreement once; the expected counts are worked out in the tests."""
    calls = [r for r in TRUTH if r[0] not in (200, 400, 2400, 1002, 1509, 2600, 2800)]
    calls = [r for r in calls if r[0] not in (600, 800, 1200)]
    calls += [
        (600, base(600), other(600, 2), "0/1", "PASS"),  # wrong ALT: one FP and one FN
        (800, base(800), other(800), "1/1", "PASS"),  # right allele, wrong zygosity
        (1200, base(1200), other(1200), "1/1", "LowQual"),  # dropped only with pass_only
        (300, base(300), other(300), "0/1", "PASS"),  # a false SNV
        (2500, base(2500), base(2500) + "G", "0/1", "PASS"),  # a false insertion
        (1007, "AA", "A", "0/1", "PASS"),  # the homopolymer deletion, right-shifted
        (1501, "G", "GCA", "1/1", "PASS"),  # the dinucleotide insertion, left-aligned
        # the 2 bp insertion with padding on both sides (bcftools trims it)
        (2599, REF[2598:2601], REF[2598:2600] + "TT" + REF[2600], "0/1", "PASS"),
        (2800, base(2800), f"{other(2800, 0)},{other(2800, 1)}", "1/2", "PASS"),
    ]
    return calls


def test_truth_against_itself_is_perfect(ref_fa: Path, truth_vcf: Path) -> None:
    result = evaluate_calls(truth_vcf, truth_vcf, ref_fa)
    assert (result.snv.tp, result.snv.fp, result.snv.fn) == (10, 0, 0)
    assert (result.indel.tp, result.indel.fp, result.indel.fn) == (4, 0, 0)
    assert result.snv.f1 == result.indel.f1 == 1.0
    assert result.genotype_concordance == 1.0


def test_equivalent_representations_are_truly_equivalent() -> None:
    # Guard the fixture itself: the shifted and padded calls spell the same haplotypes.
    moved = [r for r in edited_calls() if r[0] in (1007, 1501, 2599)]
    original = [r for r in TRUTH if r[0] in (1002, 1509, 2600)]
    assert len(moved) == len(original) == 3
    for shifted, canonical in zip(moved, original, strict=True):
        assert shifted[:3] != canonical[:3]
        assert haplotype([shifted], 1) == haplotype([canonical], 1)


def test_edited_calls_give_exact_counts(ref_fa: Path, truth_vcf: Path, tmp_path: Path) -> None:
    calls = write_vcf(tmp_path / "calls.vcf", edited_calls())
    result = evaluate(calls, truth_vcf, ref_fa)
    # SNVs: TP 800 1800 2000 2200 2800a 2800b; FP 600' 300; FN 200 400 600 1200 (filtered).
    assert (result.snv.tp, result.snv.fp, result.snv.fn) == (6, 2, 4)
    assert (result.snv.genotype_matches, result.snv.genotype_compared) == (5, 6)
    # Indels: TP homopolymer, dinucleotide, padded insertion; FP 2500; FN 2400.
    assert (result.indel.tp, result.indel.fp, result.indel.fn) == (3, 1, 1)
    assert (result.indel.genotype_matches, result.indel.genotype_compared) == (3, 3)
    assert result.snv.precision == pytest.approx(6 / 8)
    assert result.snv.recall == pytest.approx(6 / 10)
    assert result.snv.f1 == pytest.approx(12 / 18)
    assert result.indel.f1 == pytest.approx(6 / 8)
    assert result.genotype_concordance == pytest.approx(8 / 9)
    assert [k.pos for k in result.false_negatives] == [200, 400, 600, 1200, 2400]
    assert [k.pos for k in result.false_positives] == [300, 600, 2500]
    assert [k.pos for k in result.genotype_mismatches] == [800]

    everything = evaluate(calls, truth_vcf, ref_fa, pass_only=False)
    assert (everything.snv.tp, everything.snv.fp, everything.snv.fn) == (7, 2, 3)
    assert (everything.snv.genotype_matches, everything.snv.genotype_compared) == (6, 7)


def test_regions_restrict_both_sides(ref_fa: Path, truth_vcf: Path, tmp_path: Path) -> None:
    calls = write_vcf(tmp_path / "calls.vcf", edited_calls())
    bed = tmp_path / "regions.bed"
    bed.write_text("track name=x\nctg\t1900\t2300\nctg\t0\t500\nctg\t450\t1000\n")
    result = evaluate(calls, truth_vcf, ref_fa, regions=bed)
    # Inside: truth 200 400 600 800 2000 2200; calls 300 600' 800 2000 2200.
    assert (result.snv.tp, result.snv.fp, result.snv.fn) == (3, 2, 3)
    assert (result.indel.tp, result.indel.fp, result.indel.fn) == (0, 0, 0)
    assert result.indel.f1 is None and result.indel.precision is None
    assert result.regions == str(bed)


def test_regions_merge_and_need_full_containment() -> None:
    regions = Regions([("a", 10, 20), ("a", 15, 30), ("b", 0, 5), ("a", 40, 40)])
    assert regions.contains("a", 10, 30)
    assert not regions.contains("a", 9, 12)
    assert not regions.contains("a", 29, 31)
    assert not regions.contains("a", 40, 41)
    assert regions.contains("b", 4, 5) and not regions.contains("c", 0, 1)


def test_sites_only_calls_count_but_skip_genotypes(
    ref_fa: Path, truth_vcf: Path, tmp_path: Path
) -> None:
    calls = write_vcf(tmp_path / "sites.vcf", TRUTH, sites_only=True)
    result = evaluate(calls, truth_vcf, ref_fa)
    assert (result.snv.tp, result.indel.tp, result.snv.fp, result.snv.fn) == (10, 4, 0, 0)
    assert result.snv.genotype_compared == 0 and result.genotype_concordance is None


def test_result_is_json_able(ref_fa: Path, truth_vcf: Path, tmp_path: Path) -> None:
    calls = write_vcf(tmp_path / "calls.vcf", edited_calls())
    result = evaluate(calls, truth_vcf, ref_fa)
    assert isinstance(result, Evaluation)
    data = json.loads(json.dumps(result.to_dict(include_sites=True)))
    assert data["snv"]["tp"] == 6 and data["indel"]["fn"] == 1
    assert data["false_negatives"][0] == f"{CONTIG}:200:{base(200)}>{other(200)}"
    assert "false_positives" not in result.to_dict()


# --------------------------------------------------------------------------- end to end


def _aligned(
    header: pysam.AlignmentHeader, name: str, seq: str, qual: str, hit: mappy.Alignment | None
) -> pysam.AlignedSegment:
    seg = pysam.AlignedSegment(header)
    seg.query_name = name
    if hit is None:
        seg.flag = 0x4
        seg.query_sequence, seg.query_qualities = seq, pysam.qualitystring_to_array(qual)
        return seg
    clip_left, clip_right = hit.q_st, len(seq) - hit.q_en
    if hit.strand < 0:
        seq = seq.translate(str.maketrans("ACGTN", "TGCAN"))[::-1]
        qual = qual[::-1]
        clip_left, clip_right = clip_right, clip_left
    cigar = [(op, n) for n, op in hit.cigar]
    if clip_left:
        cigar.insert(0, (4, clip_left))
    if clip_right:
        cigar.append((4, clip_right))
    seg.reference_id = header.get_tid(hit.ctg)
    seg.reference_start = hit.r_st
    seg.mapping_quality = hit.mapq
    seg.cigartuples = cigar
    seg.query_sequence, seg.query_qualities = seq, pysam.qualitystring_to_array(qual)
    seg.flag = 0x10 if hit.strand < 0 else 0
    seg.set_tag("NM", hit.NM)
    return seg


def _mate_fields(first: pysam.AlignedSegment, second: pysam.AlignedSegment) -> None:
    """Flags, mate position and TLEN, as an aligner writes them (mpileup needs them)."""
    for seg, mate, which in ((first, second, 0x40), (second, first, 0x80)):
        seg.flag |= 0x1 | which
        if mate.is_unmapped:
            seg.flag |= 0x8
        else:
            seg.next_reference_id = mate.reference_id
            seg.next_reference_start = mate.reference_start
            if mate.is_reverse:
                seg.flag |= 0x20
        if seg.is_unmapped and not mate.is_unmapped:
            seg.reference_id, seg.reference_start = mate.reference_id, mate.reference_start
    if first.is_unmapped or second.is_unmapped or first.reference_id != second.reference_id:
        return
    left = min(first.reference_start, second.reference_start)
    right = max(first.reference_end or 0, second.reference_end or 0)
    fwd, rev = (first, second) if not first.is_reverse else (second, first)
    proper = fwd.is_reverse != rev.is_reverse and fwd.reference_start <= (
        rev.reference_end or 0) and right - left < 1_000
    for seg, mate in ((first, second), (second, first)):
        leftmost = seg.reference_start < mate.reference_start or (
            seg.reference_start == mate.reference_start and seg is first)
        seg.template_length = (right - left) if leftmost else -(right - left)
        if proper:
            seg.flag |= 0x2


def align_pairs(ds: SimulatedDataset, bam: Path) -> Path:
    """minimap2 (mappy) short-read alignment of the pairs into a sorted, indexed BAM."""
    aligner = mappy.Aligner(str(ds.reference), preset="sr")
    header = pysam.AlignmentHeader.from_dict(
        {"HD": {"VN": "1.6", "SO": "unsorted"},
         "SQ": [{"SN": n, "LN": ln} for n, ln in ds.contigs.items()],
         "RG": [{"ID": "sim", "SM": ds.sample}]}
    )
    unsorted = bam.with_suffix(".unsorted.bam")
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out, pysam.FastxFile(
        str(ds.r1)) as f1, pysam.FastxFile(str(ds.r2)) as f2:
        for r1, r2 in zip(f1, f2, strict=True):
            assert r1.sequence and r1.quality and r2.sequence and r2.quality and r1.name
            name = r1.name[:-2]
            hits = {h.read_num: h for h in aligner.map(r1.sequence, r2.sequence) if h.is_primary}
            a = _aligned(header, name, r1.sequence, r1.quality, hits.get(1))
            b = _aligned(header, name, r2.sequence, r2.quality, hits.get(2))
            _mate_fields(a, b)
            for seg in (a, b):
                seg.set_tag("RG", "sim")
                out.write(seg)
    pysam.sort("-o", str(bam), str(unsorted), catch_stdout=False)
    pysam.index(str(bam), catch_stdout=False)
    return bam


def test_offline_pipeline_reaches_high_snv_f1(tmp_path: Path) -> None:
    start = time.perf_counter()
    ds = simulate_dataset(tmp_path / "sim", seed=2024, length=50_000, coverage=30)
    bam = align_pairs(ds, tmp_path / "sample.bam")
    with pysam.AlignmentFile(str(bam)) as fh:
        reads = list(fh.fetch(until_eof=True))
    proper = [r for r in reads if r.is_proper_pair]
    assert len(proper) >= 0.95 * len(reads) == 0.95 * 2 * ds.read_pairs
    assert all((r.template_length > 0) == (r.reference_start <= r.next_reference_start)
               for r in proper if r.reference_start != r.next_reference_start)
    pileup, calls = tmp_path / "pileup.bcf", tmp_path / "calls.vcf.gz"
    pysam.bcftools.mpileup(
        "-f", str(ds.reference), "-a", "FORMAT/AD,FORMAT/DP", "-O", "u", "-o", str(pileup),
        str(bam), catch_stdout=False,
    )
    pysam.bcftools.call("-m", "-v", "-O", "z", "-o", str(calls), str(pileup), catch_stdout=False)
    result = evaluate_calls(calls, ds.truth_vcf, ds.reference)
    elapsed = time.perf_counter() - start
    print(f"\nend-to-end {elapsed:.1f}s: {json.dumps(result.to_dict())}")
    assert result.snv.f1 is not None and result.snv.f1 >= 0.95
    assert result.snv.tp >= 0.95 * ds.n_snv


def test_call_with_a_wrong_ref_is_a_false_positive(
    ref_fa: Path, truth_vcf: Path, tmp_path: Path
) -> None:
    wrong = other(1700, 0)
    path = write_vcf(tmp_path / "calls.vcf", TRUTH)
    lines = path.read_text().splitlines()
    lines.insert(-6, "\t".join([CONTIG, "1700", ".", wrong, other(1700, 1), "50", "PASS", ".",
                                "GT", "0/1"]))
    path.write_text("\n".join(lines) + "\n")
    result = evaluate(path, truth_vcf, ref_fa)
    assert (result.snv.tp, result.snv.fp, result.snv.fn) == (10, 1, 0)
    assert result.false_positives[0].pos == 1700
