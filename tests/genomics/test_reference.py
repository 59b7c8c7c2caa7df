"""References are checked line by line and indexed once; a changed source is re-indexed."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from careplane.genomics.reference import ReferenceError, prepare_reference, validate_fasta
from careplane.genomics.simulate import SimulatedDataset


def test_contigs_of_plain_and_gzipped_fasta(tmp_path: Path) -> None:
    text = ">a desc\nACGT\nAC\n>b\nNNNN\n"
    plain = tmp_path / "r.fa"
    plain.write_text(text)
    packed = tmp_path / "r.fa.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert validate_fasta(plain) == [("a", 6), ("b", 4)]
    assert validate_fasta(packed) == [("a", 6), ("b", 4)]


@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("ACGT\n", "line 1: a FASTA file must start with a '>'"),
    (">a\nACGT\n>a\nAC\n", "line 3: contig name 'a' is repeated"),
    (">a\n>b\nAC\n", "line 1: contig 'a' has no sequence"),
    (">a\nAC\n>b\n", "contig 'b' has no sequence"),
    (">a\nACQT\n", "line 2: 'Q' is not a nucleotide code"),
    ("> \nAC\n", "line 1: header has no name"),
    ("@r1\nACGT\n+\nIIII\n", "line 1: a FASTA file must start"),
])
def test_bad_fasta_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.fa"
    path.write_text(text)
    with pytest.raises(ReferenceError, match=message):
        validate_fasta(path)


def test_indexes_are_built_once_and_rebuilt_when_the_source_changes(
        tmp_path: Path, dataset: SimulatedDataset) -> None:
    source = tmp_path / "ref.fa"
    source.write_bytes(Path(dataset.reference).read_bytes())
    index_dir = tmp_path / "index"
    ref = prepare_reference(source, index_dir)
    assert ref.contigs == tuple(dataset.contigs.items())
    assert ref.fai.exists() and ref.mmi.exists() and ref.fasta.resolve() == source.resolve()
    built = ref.mmi.stat().st_mtime_ns
    again = prepare_reference(source, index_dir)
    assert again.mmi.stat().st_mtime_ns == built  # reused, not rebuilt

    source.write_text(">other\n" + "ACGT" * 100 + "\n")
    os.utime(source, ns=(built + 10**9, built + 10**9))
    changed = prepare_reference(source, index_dir)
    assert changed.contigs == (("other", 400),)


def test_gzipped_reference_is_decompressed_into_the_index_dir(
        tmp_path: Path, dataset: SimulatedDataset) -> None:
    packed = tmp_path / "ref.fa.gz"
    packed.write_bytes(gzip.compress(Path(dataset.reference).read_bytes()))
    ref = prepare_reference(packed, tmp_path / "idx")
    assert not ref.fasta.is_symlink() and ref.length == sum(dataset.contigs.values())


def test_missing_or_bad_reference_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReferenceError, match="no such file"):
        prepare_reference(tmp_path / "nope.fa", tmp_path / "idx")
    bad = tmp_path / "bad.fa"
    bad.write_text("hello\n")
    with pytest.raises(ReferenceError, match=r"bad\.fa line 1"):
        prepare_reference(bad, tmp_path / "idx2")
