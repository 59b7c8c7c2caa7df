"""Seeded sequencing simulator: a reference, a planted diploid truth set and paired-end reads.

Why it exists: the genomics pipeline (FASTQ -> BAM -> VCF) has to be tested and benchmarked
offline against an answer that is known exactly. Public truth sets cannot be downloaded at run
time, so careplane makes its own: from one integer seed it writes a reference FASTA, a truth VCF
of heterozygous and homozygous SNVs and small indels, and an Illumina-like FR paired-end library
sequenced from the two haplotypes that truth describes. The same seed gives byte-identical files,
so a regression shows up as a changed number rather than as noise.

Design choices, and why:

* Three independent random streams (reference, variants, reads) are spawned from the seed, so a
  caller can re-plant the variants of a dataset without re-drawing the reads, and a change to
  the read model leaves the truth set of a given seed untouched.
* Every planted indel is written left-aligned, and the spacing rule (``min_spacing``) is applied
  to the whole stretch over which the indel could equivalently be placed. Normalising the truth
  therefore never moves one variant into another, which keeps evaluation unambiguous.
* Reads are generated as numpy matrices (one row per read) so that a 100 kb genome at 30x takes
  well under a second; per-read Python work is limited to formatting names.
* Base qualities are derived from each base's own error probability and errors are drawn from
  that same probability, so low qualities mark the bases that really are wrong (the callers'
  base-quality models rely on that), while the mean error rate stays the one asked for.
* Each read name records where its fragment came from (haplotype, reference span, strand), so
  tests and QC can check alignments without any side file; see :func:`parse_read_name`.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
import pysam

__all__ = [
    "ReadOrigin",
    "SimulatedDataset",
    "SimulationConfig",
    "TruthVariant",
    "build_haplotypes",
    "parse_read_name",
    "plant_variants",
    "random_reference",
    "read_fasta",
    "simulate_dataset",
    "simulate_reads",
    "simulated_genes",
    "write_fasta",
    "write_truth_vcf",
]

Codes = npt.NDArray[np.uint8]
VariantKind = Literal["snv", "ins", "del"]

_BASES = "ACGT"
_ASCII = np.frombuffer(b"ACGTN", dtype=np.uint8)


def _encoding_table() -> Codes:
    """Byte -> code (A=0 C=1 G=2 T=3, anything else N=4), either case."""
    table = np.full(256, 4, dtype=np.uint8)
    for code, letter in enumerate("ACGT"):
        table[ord(letter)] = table[ord(letter.lower())] = code
    return table


_ENCODE = _encoding_table()
_COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.uint8)
_N = 4

# Read-quality model (see _sequencing_errors): error probability rises along the read and
# varies per read and per base; the lognormal spreads are what make qualities informative.
_QUALITY_SLOPE = 1.5
_READ_SIGMA = 0.5
_BASE_SIGMA = 1.6
_MIN_QUAL = 2
_MAX_QUAL = 41
_BATCH_PAIRS = 100_000
_FASTA_WIDTH = 60


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of one simulated dataset; the defaults resemble a 2x150 bp Illumina run."""

    coverage: float = 30.0
    read_length: int = 150
    fragment_mean: float = 400.0
    fragment_sd: float = 50.0
    error_rate: float = 0.002
    snv_rate: float = 1e-3
    indel_rate: float = 1e-4
    hom_fraction: float = 1 / 3
    min_spacing: int = 20
    max_indel_length: int = 10

    def __post_init__(self) -> None:
        # Fail early with a plain message: a bad value deep inside numpy reads as a crash.
        if self.read_length < 1:
            raise ValueError("read_length must be positive")
        if self.coverage < 0:
            raise ValueError("coverage must not be negative")
        if self.fragment_mean < self.read_length:
            raise ValueError("fragment_mean must be at least read_length")
        if self.fragment_sd < 0:
            raise ValueError("fragment_sd must not be negative")
        for name in ("error_rate", "snv_rate", "indel_rate", "hom_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.snv_rate + self.indel_rate > 1.0:
            raise ValueError("snv_rate + indel_rate must not exceed 1")
        if self.min_spacing < 1:
            raise ValueError("min_spacing must be positive")
        if self.max_indel_length < 1:
            raise ValueError("max_indel_length must be positive")


@dataclass(frozen=True)
class TruthVariant:
    """One planted variant as it appears in the truth VCF (1-based POS, anchored indels)."""

    contig: str
    pos: int
    ref: str
    alt: str
    genotype: tuple[int, int]

    @property
    def kind(self) -> VariantKind:
        if len(self.ref) == len(self.alt):
            return "snv"
        return "ins" if len(self.alt) > len(self.ref) else "del"

    @property
    def is_homozygous(self) -> bool:
        return self.genotype == (1, 1)


@dataclass(frozen=True)
class ReadOrigin:
    """Where a simulated read pair came from, decoded from its name."""

    index: int
    contig: str
    haplotype: int
    start: int  # 1-based reference position of the fragment's first base
    end: int  # 1-based reference position of the fragment's last base (inclusive)
    r1_forward: bool  # True: R1 reads the forward strand from `start`, R2 ends at `end`


@dataclass(frozen=True)
class SimulatedDataset:
    """Paths and a summary of one simulated dataset, as returned by :func:`simulate_dataset`."""

    reference: Path
    reference_index: Path
    r1: Path
    r2: Path
    truth_vcf: Path
    truth_index: Path
    seed: int
    sample: str
    contigs: dict[str, int]
    read_pairs: int
    variants: tuple[TruthVariant, ...]
    config: SimulationConfig = field(default_factory=SimulationConfig)

    @property
    def n_snv(self) -> int:
        return sum(1 for v in self.variants if v.kind == "snv")

    @property
    def n_indel(self) -> int:
        return sum(1 for v in self.variants if v.kind != "snv")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (what `careplane genomics simulate` prints)."""
        return {
            "reference": str(self.reference),
            "reference_index": str(self.reference_index),
            "r1": str(self.r1),
            "r2": str(self.r2),
            "truth_vcf": str(self.truth_vcf),
            "truth_index": str(self.truth_index),
            "seed": self.seed,
            "sample": self.sample,
            "contigs": dict(self.contigs),
            "read_pairs": self.read_pairs,
            "variants": {"snv": self.n_snv, "indel": self.n_indel},
            "config": asdict(self.config),
        }


# --------------------------------------------------------------------------- random streams


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for reference, variants and reads (see module docstring)."""
    ref_ss, var_ss, read_ss = np.random.SeedSequence(seed).spawn(3)
    return (
        np.random.Generator(np.random.PCG64(ref_ss)),
        np.random.Generator(np.random.PCG64(var_ss)),
        np.random.Generator(np.random.PCG64(read_ss)),
    )


# --------------------------------------------------------------------------- reference


def _encode(seq: str) -> Codes:
    return _ENCODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _decode(codes: Codes) -> str:
    return _ASCII[codes].tobytes().decode("ascii")


def random_reference(
    rng: np.random.Generator, lengths: Mapping[str, int]
) -> dict[str, str]:
    """Uniform random ACGT contigs; uniform sequence keeps mapping unambiguous."""
    return {name: _decode(rng.integers(0, 4, size=n, dtype=np.uint8)) for name, n in
            lengths.items()}


def read_fasta(path: str | Path) -> dict[str, str]:
    """Read a FASTA into upper-case strings, turning IUPAC codes and gaps into N."""
    out: dict[str, str] = {}
    with pysam.FastxFile(str(path)) as fh:
        for entry in fh:
            if entry.name is None:
                raise ValueError(f"unnamed sequence in {path}")
            if entry.name in out:
                raise ValueError(f"duplicate contig {entry.name!r} in {path}")
            out[entry.name] = _decode(_encode(entry.sequence or ""))
    if not out:
        raise ValueError(f"no sequences in {path}")
    return out


def write_fasta(reference: Mapping[str, str], path: str | Path) -> tuple[Path, Path]:
    """Write a FASTA with fixed-width lines and its .fai index; returns both paths."""
    target = Path(path)
    with target.open("w", encoding="ascii", newline="\n") as fh:
        for name, seq in reference.items():
            fh.write(f">{name}\n")
            for i in range(0, len(seq), _FASTA_WIDTH):
                fh.write(seq[i : i + _FASTA_WIDTH])
                fh.write("\n")
    pysam.faidx(str(target))
    return target, target.with_name(target.name + ".fai")


# --------------------------------------------------------------------------- variants


def _deletion_span(seq: str, s: int, length: int) -> tuple[int, int]:
    """Leftmost and rightmost start of an equivalent deletion of seq[s:s+length]."""
    left = s
    while left >= 2 and seq[left - 1] == seq[left + length - 1]:
        left -= 1
    right = s
    while right + length < len(seq) and seq[right] == seq[right + length]:
        right += 1
    return left, right


def _insertion_span(seq: str, s: int, inserted: str) -> tuple[int, int, str]:
    """Leftmost/rightmost equivalent insertion point, and the inserted bases at the leftmost."""
    left, ins_left = s, inserted
    while left >= 2 and seq[left - 1] == ins_left[-1]:
        ins_left = ins_left[-1] + ins_left[:-1]
        left -= 1
    right, ins_right = s, inserted
    while right < len(seq) and seq[right] == ins_right[0]:
        ins_right = ins_right[1:] + ins_right[0]
        right += 1
    return left, right, ins_left


def plant_variants(
    reference: Mapping[str, str],
    rng: np.random.Generator,
    config: SimulationConfig | None = None,
) -> list[TruthVariant]:
    """Plant SNVs and 1..max_indel_length bp indels, sorted by contig order then position.

    Candidate sites are drawn as a Poisson number of uniform positions per contig; a candidate
    is dropped when its footprint (all equivalent placements of an indel, plus its anchor)
    falls within one read length of a contig end, touches an N, or lies closer than
    ``min_spacing`` to the previous kept variant. Because of that thinning, the realised rate
    is a little below the requested one. All random values are drawn before filtering, so the
    stream consumed depends only on the number of candidates.
    """
    cfg = config or SimulationConfig()
    total_rate = cfg.snv_rate + cfg.indel_rate
    variants: list[TruthVariant] = []
    for contig, seq in reference.items():
        lo_bound, hi_bound = cfg.read_length, len(seq) - cfg.read_length
        span = hi_bound - lo_bound
        if span <= 0 or total_rate <= 0:
            continue
        k = min(int(rng.poisson(total_rate * span)), span)
        positions = np.sort(rng.choice(span, size=k, replace=False)) + lo_bound
        kind_u = rng.random(k)
        hom = rng.random(k) < cfg.hom_fraction
        het_hap = rng.integers(0, 2, size=k)
        lengths = (rng.geometric(0.45, size=k) - 1) % cfg.max_indel_length + 1
        snv_shift = rng.integers(1, 4, size=k)
        inserted = rng.integers(0, 4, size=(k, cfg.max_indel_length), dtype=np.uint8)

        snv_cut = cfg.snv_rate / total_rate
        ins_cut = snv_cut + (1.0 - snv_cut) / 2
        prev_end = -(10**18)
        for i in range(k):
            p = int(positions[i])
            if kind_u[i] < snv_cut:
                if seq[p] == "N":
                    continue
                lo, hi = p, p + 1
                ref = seq[p]
                alt = _BASES[(_BASES.index(ref) + int(snv_shift[i])) % 4]
            elif kind_u[i] < ins_cut:
                ins = _decode(inserted[i, : int(lengths[i])])
                s_left, s_right, ins_left = _insertion_span(seq, p + 1, ins)
                lo, hi = s_left - 1, s_right + 1
                ref = seq[s_left - 1]
                alt = ref + ins_left
            else:
                length = int(lengths[i])
                if p + 1 + length > len(seq):
                    continue
                s_left, s_right = _deletion_span(seq, p + 1, length)
                lo, hi = s_left - 1, s_right + length + 1
                ref = seq[s_left - 1 : s_left + length]
                alt = ref[0]
            if lo < lo_bound or hi > hi_bound or lo < prev_end + cfg.min_spacing:
                continue
            if "N" in seq[lo:hi]:
                continue
            genotype = (1, 1) if hom[i] else (1, 0) if het_hap[i] == 0 else (0, 1)
            variants.append(TruthVariant(contig, lo + 1, ref, alt, genotype))
            prev_end = hi
    return variants


def _haplotype(
    seq: str, variants: Sequence[TruthVariant], hap: int
) -> tuple[Codes, npt.NDArray[np.int64]]:
    """One haplotype as codes, plus the 0-based reference position of every haplotype base.

    Inserted bases map to their anchor, so a read's reference span can be named without
    aligning it.
    """
    codes: list[Codes] = []
    lift: list[npt.NDArray[np.int64]] = []
    cursor = 0
    for v in variants:
        if v.genotype[hap] == 0:
            continue
        anchor = v.pos - 1
        codes.append(_encode(seq[cursor:anchor]))
        lift.append(np.arange(cursor, anchor, dtype=np.int64))
        codes.append(_encode(v.alt))
        lift.append(anchor + np.minimum(np.arange(len(v.alt)), len(v.ref) - 1))
        cursor = anchor + len(v.ref)
    codes.append(_encode(seq[cursor:]))
    lift.append(np.arange(cursor, len(seq), dtype=np.int64))
    return np.concatenate(codes), np.concatenate(lift).astype(np.int64)


def _by_contig(variants: Sequence[TruthVariant]) -> dict[str, list[TruthVariant]]:
    grouped: dict[str, list[TruthVariant]] = {}
    for v in variants:
        grouped.setdefault(v.contig, []).append(v)
    for contig_variants in grouped.values():
        contig_variants.sort(key=lambda v: v.pos)
    return grouped


def build_haplotypes(
    reference: Mapping[str, str], variants: Sequence[TruthVariant]
) -> dict[str, tuple[str, str]]:
    """The two haplotype sequences of every contig that the reads are sequenced from."""
    grouped = _by_contig(variants)
    return {
        name: (
            _decode(_haplotype(seq, grouped.get(name, []), 0)[0]),
            _decode(_haplotype(seq, grouped.get(name, []), 1)[0]),
        )
        for name, seq in reference.items()
    }


def write_truth_vcf(
    variants: Sequence[TruthVariant],
    contigs: Mapping[str, int],
    path: str | Path,
    sample: str = "SIM",
    source: str | None = None,
) -> tuple[Path, Path]:
    """Write a bgzipped, tabix-indexed VCF 4.2 with phased GTs; returns (vcf.gz, tbi).

    ``path`` names the plain VCF written first; the result is ``path + '.gz'``. Records must
    be in the contig order of ``contigs``; they are sorted by position within a contig.
    """
    plain = Path(path)
    header = pysam.VariantHeader()
    if source:
        header.add_line(f"##source={source}")
    for name, length in contigs.items():
        header.contigs.add(name, length=length)
    header.formats.add("GT", 1, "String", "Genotype")
    header.add_sample(sample)
    order = {name: i for i, name in enumerate(contigs)}
    ordered = sorted(variants, key=lambda v: (order[v.contig], v.pos))
    with pysam.VariantFile(str(plain), "w", header=header) as out:
        for v in ordered:
            rec = out.new_record(contig=v.contig, start=v.pos - 1, alleles=(v.ref, v.alt))
            rec.filter.add("PASS")
            rec.samples[sample]["GT"] = v.genotype
            rec.samples[sample].phased = True
            out.write(rec)
    gz = Path(pysam.tabix_index(str(plain), preset="vcf", force=True))
    return gz, gz.with_name(gz.name + ".tbi")


# --------------------------------------------------------------------------- reads


def parse_read_name(name: str) -> ReadOrigin:
    """Decode ``sim<i>:<hap>:<start>-<end>:<+|->:<contig>`` (an optional /1 or /2 is ignored)."""
    if name.endswith(("/1", "/2")):
        name = name[:-2]
    index, hap, span, strand, contig = name.split(":", 4)
    start, end = span.split("-")
    return ReadOrigin(
        index=int(index.removeprefix("sim")),
        contig=contig,
        haplotype=int(hap),
        start=int(start),
        end=int(end),
        r1_forward=strand == "+",
    )


def _sequencing_errors(
    rng: np.random.Generator, reads: Codes, error_rate: float
) -> tuple[Codes, Codes]:
    """Apply substitution errors; return (bases, Phred+33 qualities) in read orientation.

    Each base gets an error probability error_rate * w / E[w], where w rises along the read
    and has lognormal per-read and per-base factors (so E[p] equals error_rate). The error is
    drawn from that probability and the quality is its Phred value, clipped to [2, 41].
    """
    n, length = reads.shape
    if error_rate <= 0.0:
        qual = np.where(reads == _N, _MIN_QUAL, _MAX_QUAL).astype(np.uint8)
        return reads.copy(), (qual + 33).astype(np.uint8)
    along = _QUALITY_SLOPE * np.arange(length) / max(length - 1, 1)
    mean_w = float(np.exp(along).mean()) * math.exp((_READ_SIGMA**2 + _BASE_SIGMA**2) / 2)
    # Work in log space: log p = log(rate / E[w]) + slope term + per-read + per-base normals.
    log_p = (
        rng.standard_normal((n, length), dtype=np.float32) * np.float32(_BASE_SIGMA)
        + (rng.standard_normal((n, 1), dtype=np.float32) * np.float32(_READ_SIGMA))
        + (along + math.log(error_rate / mean_w)).astype(np.float32)
    )
    np.minimum(log_p, np.float32(math.log(0.75)), out=log_p)
    is_error = (rng.random((n, length), dtype=np.float32) < np.exp(log_p)) & (reads != _N)
    bases = reads.copy()
    shift = rng.integers(1, 4, size=int(is_error.sum()), dtype=np.uint8)
    bases[is_error] = (bases[is_error] + shift) % 4
    phred = log_p * np.float32(-10.0 / math.log(10.0))
    qual = np.clip(np.rint(phred), _MIN_QUAL, _MAX_QUAL).astype(np.uint8)
    qual[reads == _N] = _MIN_QUAL
    return bases, (qual + 33).astype(np.uint8)


def _fastq_chunk(names: Sequence[str], suffix: str, bases: Codes, quals: Codes) -> bytes:
    """Format reads as FASTQ bytes; sequences and qualities are sliced from one buffer each."""
    length = bases.shape[1]
    seq_buf = _ASCII[bases].tobytes()
    qual_buf = quals.tobytes()
    parts: list[bytes] = []
    for i, name in enumerate(names):
        a, b = i * length, (i + 1) * length
        parts.append(b"@%s%s\n%s\n+\n%s\n" % (name.encode(), suffix.encode(), seq_buf[a:b],
                                             qual_buf[a:b]))
    return b"".join(parts)


@dataclass(frozen=True)
class _PairBatch:
    names: list[str]
    r1: Codes
    r1_qual: Codes
    r2: Codes
    r2_qual: Codes


def _pair_batches(
    reference: Mapping[str, str],
    variants: Sequence[TruthVariant],
    rng: np.random.Generator,
    cfg: SimulationConfig,
) -> Iterator[_PairBatch]:
    """Sample FR read pairs contig by contig, haplotype by haplotype, in bounded batches."""
    grouped = _by_contig(variants)
    rl = cfg.read_length
    offsets = np.arange(rl, dtype=np.int64)
    counter = 0
    for contig, seq in reference.items():
        if len(seq) < rl:
            continue
        n_pairs = round(cfg.coverage * len(seq) / (2 * rl))
        per_hap = np.bincount(rng.integers(0, 2, size=n_pairs), minlength=2)
        for hap in (0, 1):
            hap_codes, lift = _haplotype(seq, grouped.get(contig, []), hap)
            m = len(hap_codes)
            if m < rl:
                continue
            remaining = int(per_hap[hap])
            while remaining > 0:
                b = min(remaining, _BATCH_PAIRS)
                remaining -= b
                frag = np.rint(rng.normal(cfg.fragment_mean, cfg.fragment_sd, size=b))
                frag = np.clip(frag, rl, m).astype(np.int64)
                starts = np.floor(rng.random(b) * (m - frag + 1)).astype(np.int64)
                r1_forward = rng.random(b) < 0.5
                fwd = hap_codes[starts[:, None] + offsets]
                rev = _COMPLEMENT[hap_codes[(starts + frag - rl)[:, None] + offsets]][:, ::-1]
                r1 = np.where(r1_forward[:, None], fwd, rev)
                r2 = np.where(r1_forward[:, None], rev, fwd)
                r1, r1_qual = _sequencing_errors(rng, r1, cfg.error_rate)
                r2, r2_qual = _sequencing_errors(rng, r2, cfg.error_rate)
                ref_start = lift[starts] + 1
                ref_end = lift[starts + frag - 1] + 1
                names = [
                    f"sim{counter + i}:{hap}:{s}-{e}:{'+' if f else '-'}:{contig}"
                    for i, (s, e, f) in enumerate(
                        zip(ref_start.tolist(), ref_end.tolist(), r1_forward.tolist(),
                            strict=True)
                    )
                ]
                counter += b
                yield _PairBatch(names, r1, r1_qual, r2, r2_qual)


def _gzip_writer(path: Path) -> tuple[BinaryIO, gzip.GzipFile]:
    """A gzip stream without a timestamp or file name, so equal content gives equal bytes."""
    raw = path.open("wb")
    return raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=4)


def simulate_reads(
    reference: Mapping[str, str],
    variants: Sequence[TruthVariant],
    rng: np.random.Generator,
    r1_path: str | Path,
    r2_path: str | Path,
    config: SimulationConfig | None = None,
) -> int:
    """Write gzipped R1/R2 FASTQs (names ``.../1`` and ``.../2``); returns the pair count.

    Coverage counts both haplotypes together (30x diploid = 15x per haplotype). Fragment
    lengths are normal(mean, sd) clipped to [read_length, haplotype length], so reads never
    run into adapter.
    """
    cfg = config or SimulationConfig()
    raw1, gz1 = _gzip_writer(Path(r1_path))
    raw2, gz2 = _gzip_writer(Path(r2_path))
    pairs = 0
    try:
        for batch in _pair_batches(reference, variants, rng, cfg):
            gz1.write(_fastq_chunk(batch.names, "/1", batch.r1, batch.r1_qual))
            gz2.write(_fastq_chunk(batch.names, "/2", batch.r2, batch.r2_qual))
            pairs += len(batch.names)
    finally:
        gz1.close()
        gz2.close()
        raw1.close()
        raw2.close()
    return pairs


# --------------------------------------------------------------------------- entry point


def simulate_dataset(
    out_dir: str | Path,
    seed: int,
    length: int | Sequence[int] = 100_000,
    coverage: float = 30.0,
    *,
    reference: str | Path | None = None,
    read_length: int = 150,
    fragment_mean: float = 400.0,
    fragment_sd: float = 50.0,
    error_rate: float = 0.002,
    snv_rate: float = 1e-3,
    indel_rate: float = 1e-4,
    hom_fraction: float = 1 / 3,
    min_spacing: int = 20,
    max_indel_length: int = 10,
    sample: str = "SIM",
) -> SimulatedDataset:
    """Make a complete dataset in ``out_dir``: reference.fa(.fai), truth.vcf.gz(.tbi),
    reads_R1.fastq.gz and reads_R2.fastq.gz.

    ``length`` is one contig length or a sequence of lengths (contigs ``chr1``, ``chr2``...);
    it is ignored when ``reference`` names an existing FASTA, which is then copied (upper-cased,
    non-ACGT as N) so the dataset directory is self-contained.
    """
    cfg = SimulationConfig(
        coverage=coverage,
        read_length=read_length,
        fragment_mean=fragment_mean,
        fragment_sd=fragment_sd,
        error_rate=error_rate,
        snv_rate=snv_rate,
        indel_rate=indel_rate,
        hom_fraction=hom_fraction,
        min_spacing=min_spacing,
        max_indel_length=max_indel_length,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref_rng, var_rng, read_rng = _streams(seed)

    if reference is not None:
        ref_seqs = read_fasta(reference)
    else:
        lengths = [length] if isinstance(length, int) else list(length)
        if not lengths or any(n < 1 for n in lengths):
            raise ValueError("contig lengths must be positive")
        ref_seqs = random_reference(
            ref_rng, {f"chr{i + 1}": n for i, n in enumerate(lengths)}
        )
    contigs = {name: len(seq) for name, seq in ref_seqs.items()}
    ref_path, fai_path = write_fasta(ref_seqs, out / "reference.fa")

    variants = plant_variants(ref_seqs, var_rng, cfg)
    vcf_path, tbi_path = write_truth_vcf(
        variants, contigs, out / "truth.vcf", sample=sample,
        source=f"careplane.genomics.simulate seed={seed}",
    )
    r1, r2 = out / "reads_R1.fastq.gz", out / "reads_R2.fastq.gz"
    pairs = simulate_reads(ref_seqs, variants, read_rng, r1, r2, cfg)
    return SimulatedDataset(
        reference=ref_path,
        reference_index=fai_path,
        r1=r1,
        r2=r2,
        truth_vcf=vcf_path,
        truth_index=tbi_path,
        seed=seed,
        sample=sample,
        contigs=contigs,
        read_pairs=pairs,
        variants=tuple(variants),
        config=cfg,
    )


def simulated_genes(contigs: Mapping[str, int], seed: int = 11, *, min_length: int = 600,
                    max_length: int = 3_000, min_gap: int = 100, max_gap: int = 1_500
                    ) -> list[tuple[str, int, int, str]]:
    """Gene-like intervals tiling the simulator's contigs: ``(chrom, start, end, name)`` with
    BED's 0-based, half-open coordinates, in order.

    The simulator's genomes are random, so they have no genes; this gives them an annotation of
    the usual shape (genes of 0.6-3 kb separated by 0.1-1.5 kb intergenic gaps, names
    ``<CONTIG>G<number>`` such as ``CHR1G007``), so gene queries can be shown and tested on
    simulated data. careplane ships the table for ``chr1`` to ``chr4`` at 250 kb each (which
    covers every dataset the tests and the demo simulate) as its default gene table; see
    :mod:`careplane.genomics.variants`.
    """
    rng = np.random.default_rng(seed)
    genes: list[tuple[str, int, int, str]] = []
    for chrom, size in contigs.items():
        position, number = int(rng.integers(min_gap, max_gap + 1)), 0
        while True:
            length = int(rng.integers(min_length, max_length + 1))
            if position + length > size:
                break
            number += 1
            genes.append((chrom, position, position + length, f"{chrom.upper()}G{number:03d}"))
            position += length + int(rng.integers(min_gap, max_gap + 1))
    return genes
