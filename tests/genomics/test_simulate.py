"""The simulator must be reproducible, its truth exact, and its reads sequenced from that truth.

Everything downstream (pipeline tests, benchmarks) trusts these properties, so each one is
checked against an independent re-derivation here rather than against the simulator's own
helpers.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import mappy
import numpy as np
import pysam
import pytest

from careplane.genomics.simulate import (
    SimulatedDataset,
    SimulationConfig,
    build_haplotypes,
    parse_read_name,
    read_fasta,
    simulate_dataset,
)

_COMP = str.maketrans("ACGTN", "TGCAN")


def revcomp(seq: str) -> str:
    return seq.translate(_COMP)[::-1]


def read_pairs(ds: SimulatedDataset) -> Iterator[tuple[pysam.FastxRecord, pysam.FastxRecord]]:
    with pysam.FastxFile(str(ds.r1)) as f1, pysam.FastxFile(str(ds.r2)) as f2:
        yield from zip(f1, f2, strict=True)


def apply_vcf(reference: dict[str, str], vcf: Path) -> dict[str, tuple[str, str]]:
    """Rebuild both haplotypes from the VCF text alone: the independent check of the truth."""
    records: dict[str, list[tuple[int, str, str, tuple[int, int]]]] = {c: [] for c in reference}
    with pysam.VariantFile(str(vcf)) as fh:
        sample = next(iter(fh.header.samples))
        for rec in fh:
            gt = rec.samples[sample]["GT"]
            assert rec.alts is not None and rec.ref is not None
            records[rec.chrom].append((rec.pos, rec.ref, rec.alts[0], (int(gt[0]), int(gt[1]))))
    out: dict[str, tuple[str, str]] = {}
    for contig, seq in reference.items():
        haps = []
        for hap in (0, 1):
            parts, cursor = [], 0
            for pos, ref, alt, gt in records[contig]:
                if gt[hap] != 1:
                    continue
                start = pos - 1
                assert seq[start : start + len(ref)] == ref
                parts.append(seq[cursor:start])
                parts.append(alt)
                cursor = start + len(ref)
            parts.append(seq[cursor:])
            haps.append("".join(parts))
        out[contig] = (haps[0], haps[1])
    return out


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    """Two contigs, raised variant rates so every kind of variant appears, default errors."""
    return simulate_dataset(
        tmp_path_factory.mktemp("noisy"), seed=5, length=[30_000, 20_000], coverage=20,
        snv_rate=4e-3, indel_rate=2e-3,
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDataset:
    """No sequencing errors, so every read must occur verbatim in its haplotype."""
    return simulate_dataset(
        tmp_path_factory.mktemp("clean"), seed=9, length=[15_000, 10_000], coverage=10,
        snv_rate=4e-3, indel_rate=3e-3, error_rate=0.0,
    )


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kwargs = {"length": [12_000, 8_000], "coverage": 8.0, "indel_rate": 1e-3}
    a = simulate_dataset(tmp_path / "a", seed=42, **kwargs)
    b = simulate_dataset(tmp_path / "b", seed=42, **kwargs)
    c = simulate_dataset(tmp_path / "c", seed=43, **kwargs)
    for attr in ("reference", "reference_index", "r1", "r2", "truth_vcf", "truth_index"):
        assert getattr(a, attr).read_bytes() == getattr(b, attr).read_bytes(), attr
    assert a.variants == b.variants
    for attr in ("reference", "r1", "r2", "truth_vcf"):
        assert getattr(a, attr).read_bytes() != getattr(c, attr).read_bytes(), attr


def test_truth_vcf_is_valid_sorted_and_spaced(noisy: SimulatedDataset) -> None:
    reference = read_fasta(noisy.reference)
    rl, spacing = noisy.config.read_length, noisy.config.min_spacing
    order = list(reference)
    with pysam.VariantFile(str(noisy.truth_vcf)) as fh:
        assert fh.header.version == "VCFv4.2"
        assert list(fh.header.contigs) == order
        assert [fh.header.contigs[c].length for c in order] == [30_000, 20_000]
        assert "GT" in fh.header.formats
        records = list(fh)
        # The tabix index answers region queries.
        contig = records[len(records) // 2].chrom
        fetched = list(fh.fetch(contig, 5_000, 15_000))
    assert fetched and all(r.stop > 5_000 and r.start < 15_000 for r in fetched)
    assert noisy.truth_index.exists()

    keys = [(order.index(r.chrom), r.pos) for r in records]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len(records) == len(noisy.variants)
    kinds: set[str] = set()
    genotypes: set[tuple[int, int]] = set()
    prev: dict[str, int] = {}
    for r in records:
        seq = reference[r.chrom]
        assert r.ref is not None and r.alts is not None and len(r.alts) == 1
        ref, alt = r.ref, r.alts[0]
        assert seq[r.start : r.stop] == ref
        assert set(ref + alt) <= set("ACGT") and ref != alt
        if len(ref) == len(alt):
            assert len(ref) == 1
            kinds.add("snv")
        else:
            # Anchored indel: shared first base, then 1..10 inserted or deleted bases.
            assert ref[0] == alt[0] and min(len(ref), len(alt)) == 1
            assert 1 <= abs(len(ref) - len(alt)) <= noisy.config.max_indel_length
            kinds.add("ins" if len(alt) > len(ref) else "del")
        assert rl <= r.start and r.stop <= len(seq) - rl
        if r.chrom in prev:
            assert r.start - prev[r.chrom] >= spacing
        prev[r.chrom] = r.stop
        gt = r.samples[0]["GT"]
        assert r.samples[0].phased
        genotypes.add((int(gt[0]), int(gt[1])))
        assert list(r.filter.keys()) == ["PASS"]
    assert kinds == {"snv", "ins", "del"}
    assert genotypes == {(0, 1), (1, 0), (1, 1)}


def test_truth_vcf_reproduces_the_sequenced_haplotypes(clean: SimulatedDataset) -> None:
    reference = read_fasta(clean.reference)
    rebuilt = apply_vcf(reference, clean.truth_vcf)
    assert rebuilt == build_haplotypes(reference, clean.variants)
    for contig in reference:
        assert rebuilt[contig][0] != rebuilt[contig][1]

    # Error-free reads must occur verbatim in the haplotype their name gives, at its place.
    checked = 0
    for i, (r1, r2) in enumerate(read_pairs(clean)):
        if i % 7:
            continue
        origin = parse_read_name(r1.name)
        assert parse_read_name(r2.name) == origin
        hap = rebuilt[origin.contig][origin.haplotype]
        fwd, rev = (r1, r2) if origin.r1_forward else (r2, r1)
        assert fwd.sequence is not None and rev.sequence is not None
        at = hap.find(fwd.sequence, max(0, origin.start - 200), origin.start + 200)
        assert at >= 0, origin
        assert hap.find(revcomp(rev.sequence), at) >= 0, origin
        checked += 1
    assert checked > 100


def test_fastq_pairs_are_named_and_sized_like_illumina(noisy: SimulatedDataset) -> None:
    rl = noisy.config.read_length
    expected = sum(round(20 * n / (2 * rl)) for n in noisy.contigs.values())
    assert noisy.read_pairs == expected
    n = 0
    fragment_lengths = []
    for r1, r2 in read_pairs(noisy):
        assert r1.name is not None and r2.name is not None
        assert r1.name.endswith("/1") and r2.name.endswith("/2")
        assert r1.name[:-2] == r2.name[:-2]
        assert len(r1.sequence or "") == len(r1.quality or "") == rl
        assert len(r2.sequence or "") == len(r2.quality or "") == rl
        origin = parse_read_name(r1.name)
        fragment_lengths.append(origin.end - origin.start + 1)
        n += 1
    assert n == expected
    # Indels shift a few fragments by a few bases; the spread must still be the configured one.
    assert abs(float(np.mean(fragment_lengths)) - 400) < 5
    assert abs(float(np.std(fragment_lengths)) - 50) < 5


def test_reads_map_back_to_where_they_came_from(noisy: SimulatedDataset) -> None:
    aligner = mappy.Aligner(str(noisy.reference), preset="sr")
    assert aligner
    total = right = proper_fr = 0
    for i, (r1, r2) in enumerate(read_pairs(noisy)):
        if i % 5:
            continue
        origin = parse_read_name(r1.name)
        assert r1.sequence is not None and r2.sequence is not None
        hits = {h.read_num: h for h in aligner.map(r1.sequence, r2.sequence) if h.is_primary}
        for read_num in (1, 2):
            total += 1
            hit = hits.get(read_num)
            if hit is None or hit.ctg != origin.contig:
                continue
            forward = origin.r1_forward == (read_num == 1)
            if forward:
                ok = hit.strand == 1 and abs(hit.r_st - hit.q_st - (origin.start - 1)) <= 10
            else:
                ok = hit.strand == -1 and abs(hit.r_en + hit.q_st - origin.end) <= 10
            right += ok
        if 1 in hits and 2 in hits and hits[1].strand == -hits[2].strand:
            proper_fr += 1
    assert total > 1000
    assert right / total >= 0.95, right / total
    assert proper_fr / (total / 2) >= 0.95


def test_qualities_mark_the_erroneous_bases(tmp_path: Path) -> None:
    ds = simulate_dataset(
        tmp_path, seed=3, length=20_000, coverage=10, snv_rate=0.0, indel_rate=0.0,
        error_rate=0.01,
    )
    assert ds.variants == ()
    seq = read_fasta(ds.reference)["chr1"]
    rl = ds.config.read_length
    errors: list[np.ndarray] = []
    quals: list[np.ndarray] = []
    for r1, r2 in read_pairs(ds):
        origin = parse_read_name(r1.name)
        fwd_true = seq[origin.start - 1 : origin.start - 1 + rl]
        rev_true = revcomp(seq[origin.end - rl : origin.end])
        pairs = [(r1, fwd_true), (r2, rev_true)] if origin.r1_forward else [
            (r1, rev_true), (r2, fwd_true)]
        for rec, truth in pairs:
            assert rec.sequence is not None and rec.quality is not None
            got = np.frombuffer(rec.sequence.encode(), np.uint8)
            errors.append(got != np.frombuffer(truth.encode(), np.uint8))
            quals.append(np.frombuffer(rec.quality.encode(), np.uint8) - 33)
    err = np.concatenate(errors)
    q = np.concatenate(quals).astype(float)
    assert 0.008 < err.mean() < 0.012
    assert q[err].mean() < q[~err].mean() - 5
    # Calibration: the observed error rate of each quality band is near its Phred value.
    low, high = q < 15, q >= 30
    assert err[low].mean() > 10 * err[high].mean()
    for band_lo, band_hi in ((10, 15), (20, 25)):
        band = (q >= band_lo) & (q < band_hi)
        expected = float(np.mean(10 ** (-q[band] / 10)))
        assert abs(math.log10(err[band].mean() / expected)) < 0.2


def test_given_fasta_is_used_and_its_ns_avoided(tmp_path: Path) -> None:
    rng = random.Random(1)
    contig_a = "".join(rng.choice("acgtACGT") for _ in range(6_000))
    contig_a = contig_a[:3_000] + "N" * 500 + contig_a[3_500:]
    contig_b = "".join(rng.choice("ACGT") for _ in range(4_000))
    fasta = tmp_path / "given.fa"
    fasta.write_text(f">alpha desc\n{contig_a}\n>beta\n{contig_b[:2000]}\n{contig_b[2000:]}\n")
    ds = simulate_dataset(
        tmp_path / "out", seed=1, reference=fasta, coverage=5, snv_rate=0.02, indel_rate=0.005
    )
    ref = read_fasta(ds.reference)
    assert ref == {"alpha": contig_a.upper(), "beta": contig_b}
    assert ds.contigs == {"alpha": 6_000, "beta": 4_000}
    assert ds.variants
    for v in ds.variants:
        assert "N" not in ref[v.contig][v.pos - 1 : v.pos - 1 + len(v.ref)]
        assert not (v.contig == "alpha" and 3_001 <= v.pos <= 3_500)


def test_simulates_100kb_at_30x_in_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    ds = simulate_dataset(tmp_path, seed=100, length=100_000, coverage=30)
    elapsed = time.perf_counter() - start
    assert ds.read_pairs == 10_000
    assert elapsed < 10.0, elapsed  # about 1 s alone; room for a busy machine


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="fragment_mean"):
        SimulationConfig(read_length=150, fragment_mean=100)
    with pytest.raises(ValueError, match="error_rate"):
        SimulationConfig(error_rate=1.5)
