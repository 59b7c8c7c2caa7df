"""Paired FASTQ reading that refuses bad input with the file and line at fault.

Why it exists: an aligner fed a truncated or malformed FASTQ either crashes somewhere deep in C
or, worse, silently aligns a shifted stream in which read 1 of one pair meets read 2 of another.
The pipeline reads both mates itself, in lockstep, checking every record (header, sequence,
separator, quality) and that the two mates carry the same name, so that bad input stops the run
with a message a user can act on ("reads_R2.fq.gz line 40001: quality line is 149 characters,
sequence is 150"). Gzip and plain files are told apart by their magic bytes, not their names.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["FastqError", "FastqReader", "ReadPair", "mate_name", "pack_pairs", "read_pair_chunks",
           "read_pairs", "unpack_pairs"]

_GZIP_MAGIC = b"\x1f\x8b"
_SEQ_OK = b"ACGTNacgtnRYKMSWBDHVrykmswbdhv."
_QUAL_OK = bytes(range(33, 127))


class FastqError(ValueError):
    """Bad FASTQ input; ``str()`` names the file and, where known, the line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[FastqError], tuple[str, int | None, str]]:
        return (FastqError, (self.path, self.line, self.problem))


@dataclass(frozen=True, slots=True)
class ReadPair:
    """One fragment: the shared name, and each mate's bases and qualities (Phred+33)."""

    name: str
    seq1: str
    qual1: str
    seq2: str
    qual2: str


def mate_name(header: str) -> str:
    """The read name shared by both mates: the header's first word without ``/1`` or ``/2``."""
    cut = header.find(" ")
    word = header if cut < 0 else header[:cut]
    if "\t" in word:
        word = word.split("\t", 1)[0]
    if len(word) > 2 and word[-2] == "/" and word[-1] in "12":
        return word[:-2]
    return word


class _CountingReader(io.RawIOBase):
    """Counts the compressed bytes consumed, so progress can be told before the end is known."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.consumed += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class FastqReader:
    """Iterates (header, sequence, quality) records of one FASTQ file, checking each one.

    The file is read in large decompressed blocks and split into lines in C; each record then
    costs a handful of bytes operations, so checking every read does not slow the pipeline.
    """

    _BLOCK = 1 << 22

    def __init__(self, source: str | Path | BinaryIO, name: str | None = None) -> None:
        if isinstance(source, (str, Path)):
            self.name = name or str(source)
            try:
                raw: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise FastqError(self.name, None, f"cannot be read ({exc.strerror})") from exc
        else:
            self.name = name or str(getattr(source, "name", "<stream>"))
            raw = source
        self._counter = _CountingReader(raw)
        buffered = io.BufferedReader(self._counter, buffer_size=1 << 20)
        self._buffered = buffered
        magic = buffered.peek(2)[:2]
        self.compressed = magic == _GZIP_MAGIC
        self._gzip = gzip.GzipFile(fileobj=buffered, mode="rb") if self.compressed else None
        self._stream: BinaryIO = self._gzip if self._gzip is not None else buffered  # type: ignore[assignment]
        self._lines: list[bytes] = []
        self._next = 0
        self._tail = b""
        self._eof = False
        self.line = 0
        self.records = 0

    @property
    def bytes_consumed(self) -> int:
        return self._counter.consumed

    def close(self) -> None:
        # GzipFile leaves the file object it was given open: close the chain from both ends.
        if self._gzip is not None:
            self._gzip.close()
        self._buffered.close()
        self._counter.close()

    def __enter__(self) -> FastqReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _fill(self) -> bool:
        """Load the next block of lines; False at the end of the file."""
        if self._eof:
            return False
        try:
            block = self._stream.read(self._BLOCK)
        except EOFError as exc:
            raise FastqError(self.name, self.line + len(self._lines) - self._next + 1,
                             "the gzip stream ends early (the file is truncated)") from exc
        except (OSError, zlib.error) as exc:
            raise FastqError(self.name, self.line + 1, f"cannot be decompressed ({exc})") from exc
        if not block:
            self._eof = True
            if self._tail:
                self._lines, self._next, self._tail = [self._tail], 0, b""
                return True
            return False
        text = self._tail + block
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        lines = text.split(b"\n")
        self._tail = lines.pop()
        self._lines, self._next = lines, 0
        return True

    def _readline(self) -> bytes | None:
        if self._next >= len(self._lines) and not self._fill():
            return None
        if self._next >= len(self._lines):  # a block without a complete line
            return self._readline()
        line = self._lines[self._next]
        self._next += 1
        self.line += 1
        return line

    def read(self) -> tuple[str, str, str] | None:
        """The next record, or None at a clean end of file."""
        header = self._readline()
        while header is not None and not header:  # tolerate blank lines between records
            header = self._readline()
        if header is None:
            if self.records == 0:
                raise FastqError(self.name, None, "is empty (no reads)")
            return None
        start = self.line
        if not header.startswith(b"@"):
            raise FastqError(self.name, start, "a record must start with '@', found "
                             f"{header[:30].decode('latin-1')!r}")
        seq = self._readline()
        plus = self._readline()
        qual = self._readline()
        if seq is None or plus is None or qual is None:
            raise FastqError(self.name, start,
                             "the last record is incomplete (the file is truncated)")
        if not plus.startswith(b"+"):
            raise FastqError(self.name, start + 2, "separator line must start with '+', found "
                             f"{plus[:30].decode('latin-1')!r}")
        if not seq:
            raise FastqError(self.name, start + 1, "the sequence is empty")
        bad = seq.translate(None, _SEQ_OK)
        if bad:
            raise FastqError(self.name, start + 1,
                             f"sequence contains {bad[:1].decode('latin-1')!r}")
        if len(qual) != len(seq):
            raise FastqError(self.name, start + 3,
                             f"quality line is {len(qual)} characters, sequence is {len(seq)}")
        if qual.translate(None, _QUAL_OK):
            raise FastqError(self.name, start + 3, "quality line has characters outside '!'..'~'")
        self.records += 1
        try:
            name = header[1:].decode("ascii")
        except UnicodeDecodeError as exc:
            raise FastqError(self.name, start, "the read name is not ASCII") from exc
        return name, seq.decode("ascii"), qual.decode("ascii")


class _Batch:
    """Records as three parallel lists: names (header without ``@``), sequences, qualities."""

    __slots__ = ("headers", "quals", "seqs")

    def __init__(self) -> None:
        self.headers: list[bytes] = []
        self.seqs: list[bytes] = []
        self.quals: list[bytes] = []

    def __len__(self) -> int:
        return len(self.seqs)


def _whole_block_ok(h: list[bytes], s: list[bytes], p: list[bytes], q: list[bytes]) -> bool:
    """Every record in these lines is well formed: checked list-wise, each test one C loop
    over the whole block rather than a few bytes operations per record."""
    n = len(s)
    heads = b"\n".join(h)
    plus = b"\n".join(p)
    lengths = list(map(len, s))
    return (heads[:1] == b"@" and heads.count(b"\n@") == n - 1
            and plus[:1] == b"+" and plus.count(b"\n+") == n - 1
            and lengths == list(map(len, q)) and min(lengths) > 0
            and not b"".join(s).translate(None, _SEQ_OK)
            and not b"".join(q).translate(None, _QUAL_OK))


def _read_batch(reader: FastqReader, n: int) -> _Batch:
    """Up to ``n`` records. The whole records inside the current block are checked at once
    (see :func:`_whole_block_ok`); when that finds a fault, or a record spans two blocks, or
    there is a blank line, the records go one by one through :meth:`FastqReader.read`, which
    names the exact line at fault."""
    out = _Batch()
    while len(out) < n:
        lines, i = reader._lines, reader._next
        whole = min((len(lines) - i) // 4, n - len(out))
        if whole:
            stop = i + 4 * whole
            h, s, p, q = (lines[i:stop:4], lines[i + 1:stop:4], lines[i + 2:stop:4],
                          lines[i + 3:stop:4])
            if _whole_block_ok(h, s, p, q):
                out.headers.extend([x[1:] for x in h])
                out.seqs.extend(s)
                out.quals.extend(q)
                reader._next = stop
                reader.line += 4 * whole
                reader.records += whole
                if len(out) >= n:
                    break
        record = reader.read()  # one record the careful way (it raises on a fault)
        if record is None:
            break
        out.headers.append(record[0].encode("ascii"))
        out.seqs.append(record[1].encode("ascii"))
        out.quals.append(record[2].encode("ascii"))
    return out


def _mate_name_bytes(header: bytes) -> bytes:
    cut = header.find(b" ")
    word = header if cut < 0 else header[:cut]
    if b"\t" in word:
        word = word.split(b"\t", 1)[0]
    if len(word) > 2 and word[-2:] in (b"/1", b"/2"):
        return word[:-2]
    return word


_COMMENT = re.compile(rb" [^\n]*")


def _mate_names_fast(headers: list[bytes]) -> list[bytes] | None:
    """:func:`_mate_name_bytes` of every header, for the usual shapes of a whole batch (no
    tabs; all names ending in ``/1``, all in ``/2`` or none in either), in a few C loops;
    None when the batch has another shape and needs the per-record function."""
    joined = b"\n".join(headers) + b"\n"
    if b"\t" in joined:
        return None
    if b" " in joined:  # comments after the name
        joined = _COMMENT.sub(b"", joined)
    n = len(headers)
    for suffix in (b"/1\n", b"/2\n"):
        count = joined.count(suffix)
        if count == n:
            joined = joined.replace(suffix, b"\n")  # one suffix per name, stripped once
            break
        if count:
            return None
    else:
        if b"/1\n" in joined or b"/2\n" in joined:
            return None
    if joined[:1] == b"\n" or b"\n\n" in joined:  # a name that was only "/1": keep it
        return None
    return joined.split(b"\n")[:-1]


def _mate_names(batch: _Batch) -> list[bytes]:
    fast = _mate_names_fast(batch.headers)
    return fast if fast is not None else [_mate_name_bytes(h) for h in batch.headers]


def read_pair_chunks(r1: FastqReader, r2: FastqReader, chunk_size: int = 20_000
                     ) -> Iterator[tuple[int, bytes]]:
    """Yield ``(pairs, payload)``: up to ``chunk_size`` mate pairs read in lockstep, packed as
    ``name, seq1, qual1, seq2, qual2`` lines (cheap to hand to another process; see
    :func:`unpack_pairs`)."""
    while True:
        a = _read_batch(r1, chunk_size)
        b = _read_batch(r2, chunk_size)
        if len(a) != len(b):
            short, other = (r1, r2) if len(a) < len(b) else (r2, r1)
            raise FastqError(short.name, short.line,
                             f"ends after {short.records} reads but {other.name} has more: "
                             "the mates are out of step")
        if not len(a):
            return
        names, names2 = _mate_names(a), _mate_names(b)
        if names != names2:
            k = next(k for k, (x, y) in enumerate(zip(names, names2, strict=True)) if x != y)
            back = 4 * (len(a) - k)  # exact unless blank lines were skipped
            raise FastqError(
                r2.name, r2.line - back + 1,
                f"mate name {names2[k].decode('ascii', 'replace')!r} does not "
                f"match {names[k].decode('ascii', 'replace')!r} at {r1.name} line "
                f"{r1.line - back + 1}: the mates are out of step")
        parts: list[bytes] = [b""] * (5 * len(a))
        parts[0::5] = names
        parts[1::5] = a.seqs
        parts[2::5] = a.quals
        parts[3::5] = b.seqs
        parts[4::5] = b.quals
        yield len(a), b"\n".join(parts)


def pack_pairs(pairs: Sequence[ReadPair]) -> bytes:
    """The packed form of ``pairs``, as :func:`read_pair_chunks` yields it."""
    return "\n".join(f"{p.name}\n{p.seq1}\n{p.qual1}\n{p.seq2}\n{p.qual2}"
                     for p in pairs).encode("ascii")


def unpack_pairs(payload: bytes) -> list[ReadPair]:
    """The pairs of a chunk made by :func:`read_pair_chunks` (bases upper-cased)."""
    lines = payload.decode("ascii", "replace").split("\n")
    return [ReadPair(lines[i], lines[i + 1].upper(), lines[i + 2], lines[i + 3].upper(),
                     lines[i + 4]) for i in range(0, len(lines) - 4, 5)]


def read_pairs(r1: FastqReader, r2: FastqReader, chunk_size: int = 20_000
               ) -> Iterator[list[ReadPair]]:
    """Yield lists of up to ``chunk_size`` mate pairs, read in lockstep from both files."""
    for _, payload in read_pair_chunks(r1, r2, chunk_size):
        yield unpack_pairs(payload)
