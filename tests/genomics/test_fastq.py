"""Bad FASTQ input is refused with the file and line at fault; good input reads in lockstep."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from careplane.genomics.fastq import FastqError, FastqReader, mate_name, read_pairs
from tests.genomics.conftest import write_gz

REC = "@r{i}{m} extra\nACGTACGTAC\n+\nIIIIIIIIII\n"


def _pair(tmp_path: Path, n: int = 3, r1: str | None = None, r2: str | None = None
          ) -> tuple[Path, Path]:
    a = write_gz(tmp_path / "r1.fq.gz", r1 if r1 is not None else
                 "".join(REC.format(i=i, m="/1") for i in range(n)))
    b = write_gz(tmp_path / "r2.fq.gz", r2 if r2 is not None else
                 "".join(REC.format(i=i, m="/2") for i in range(n)))
    return a, b


def _read_all(a: Path, b: Path, chunk: int = 2) -> list[list[str]]:
    with FastqReader(a) as r1, FastqReader(b) as r2:
        return [[p.name for p in c] for c in read_pairs(r1, r2, chunk)]


def test_pairs_come_in_chunks_with_shared_names(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, n=5)
    assert _read_all(a, b) == [["r0", "r1"], ["r2", "r3"], ["r4"]]


def test_plain_and_gzip_are_told_apart_by_content(tmp_path: Path) -> None:
    plain = tmp_path / "reads.fq.gz"  # misleading name: content decides
    plain.write_text(REC.format(i=0, m=""))
    with FastqReader(plain) as reader:
        assert not reader.compressed
        assert reader.read() == ("r0 extra", "ACGTACGTAC", "IIIIIIIIII")


@pytest.mark.parametrize("header,expected", [("r1/1 x", "r1"), ("r1/2", "r1"), ("r1", "r1"),
                                             ("a/b/1", "a/b")])
def test_mate_name(header: str, expected: str) -> None:
    assert mate_name(header) == expected


def test_mates_out_of_step_names_both_files(tmp_path: Path) -> None:
    r2 = "".join(REC.format(i=i, m="/2") for i in (0, 2, 1))
    a, b = _pair(tmp_path, r2=r2)
    with pytest.raises(FastqError) as err:
        _read_all(a, b)
    assert "r2.fq.gz line 5" in str(err.value) and "r1.fq.gz line 5" in str(err.value)
    assert "out of step" in str(err.value)


def test_one_file_shorter_than_the_other(tmp_path: Path) -> None:
    r2 = "".join(REC.format(i=i, m="/2") for i in range(2))
    a, b = _pair(tmp_path, r2=r2)
    with pytest.raises(FastqError, match=r"r2.fq.gz line 8: ends after 2 reads"):
        _read_all(a, b)


def test_quality_line_of_wrong_length(tmp_path: Path) -> None:
    r1 = REC.format(i=0, m="") + "@r1\nACGT\n+\nIII\n"
    a, b = _pair(tmp_path, r1=r1)
    with pytest.raises(FastqError, match=r"r1.fq.gz line 8: quality line is 3 characters, "
                                         r"sequence is 4"):
        _read_all(a, b)


def test_bad_quality_characters_and_headers(tmp_path: Path) -> None:
    bad_qual = tmp_path / "q.fq"
    bad_qual.write_text("@r\nAC\n+\nI \n")
    with FastqReader(bad_qual) as reader, pytest.raises(FastqError, match=r"q\.fq line 4"):
        reader.read()
    bad_head = tmp_path / "h.fq"
    bad_head.write_text("r\nAC\n+\nII\n")
    with FastqReader(bad_head) as reader, pytest.raises(FastqError, match=r"h\.fq line 1: a rec"):
        reader.read()
    bad_sep = tmp_path / "s.fq"
    bad_sep.write_text("@r\nAC\n-\nII\n")
    with FastqReader(bad_sep) as reader, pytest.raises(FastqError, match=r"s\.fq line 3"):
        reader.read()
    bad_base = tmp_path / "b.fq"
    bad_base.write_text("@r\nAXC\n+\nIII\n")
    with FastqReader(bad_base) as reader, pytest.raises(FastqError, match="'X'"):
        reader.read()


def test_truncated_gzip_and_truncated_record(tmp_path: Path) -> None:
    whole = gzip.compress("".join(REC.format(i=i, m="") for i in range(2000)).encode())
    cut = tmp_path / "cut.fq.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with FastqReader(cut) as reader, pytest.raises(FastqError, match="truncated"):
        while reader.read():
            pass
    short = tmp_path / "short.fq"
    short.write_text("@r\nACGT\n+\n")
    with FastqReader(short) as reader, pytest.raises(FastqError,
                                                      match=r"short\.fq line 1: the last record"):
        reader.read()


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fq"
    empty.write_bytes(b"")
    with FastqReader(empty) as reader, pytest.raises(FastqError, match=r"empty\.fq: is empty"):
        reader.read()


def test_errors_survive_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(FastqError("x.fq", 3, "bad")))
    assert str(err) == "x.fq line 3: bad" and err.line == 3


@pytest.mark.parametrize("headers", [
    [b"r1/1", b"r2/1"], [b"r1/2", b"r2/2"], [b"r1", b"r2"], [b"r1/1 c x", b"r2/1 y"],
    [b"x/2/1", b"y/1/1"], [b"r1/1", b"r2"], [b"/1", b"a/1"], [b"a\tb/1", b"c/1"],
    [b"r1 1:N:0:ACGT", b"r2 1:N:0:ACGT"], [b"ab/3", b"cd/1"]])
def test_batch_mate_names_equal_the_per_record_rule(headers: list[bytes]) -> None:
    """The batch shortcut gives exactly the per-record names, or declines (None)."""
    from careplane.genomics.fastq import _mate_name_bytes, _mate_names_fast

    fast = _mate_names_fast(headers)
    if fast is not None:
        assert fast == [_mate_name_bytes(h) for h in headers]
    if headers in ([b"r1/1", b"r2/1"], [b"r1 1:N:0:ACGT", b"r2 1:N:0:ACGT"]):
        assert fast == [b"r1", b"r2"]  # the usual shapes take the shortcut
