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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["FastqError", "FastqReader", "ReadPair", "mate_name", "read_pairs"]

_GZIP_MAGIC = b"\x1f\x8b"
_SEQ_OK = frozenset(b"ACGTNacgtnRYKMSWBDHVrykmswbdhv.")


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
    word = header.split(None, 1)[0] if header else ""
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
    """Iterates (header, sequence, quality) records of one FASTQ file, checking each one."""

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
        stream: BinaryIO = (gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
                            if self.compressed else buffered)
        self._text = io.TextIOWrapper(stream, encoding="ascii", errors="strict", newline=None)
        self.line = 0
        self.records = 0

    @property
    def bytes_consumed(self) -> int:
        return self._counter.consumed

    def close(self) -> None:
        # GzipFile leaves the file object it was given open: close the chain from both ends.
        self._text.close()
        self._buffered.close()
        self._counter.close()

    def __enter__(self) -> FastqReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _readline(self) -> str:
        try:
            text = self._text.readline()
        except EOFError as exc:
            raise FastqError(self.name, self.line + 1,
                             "the gzip stream ends early (the file is truncated)") from exc
        except (OSError, zlib.error) as exc:
            raise FastqError(self.name, self.line + 1, f"cannot be decompressed ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise FastqError(self.name, self.line + 1,
                             "contains bytes that are not ASCII (not a FASTQ file?)") from exc
        if text:
            self.line += 1
        return text

    def read(self) -> tuple[str, str, str] | None:
        """The next record, or None at a clean end of file."""
        header = self._readline()
        while header in ("\n", "\r\n") and header:  # tolerate blank lines between records
            header = self._readline()
        if not header:
            if self.records == 0:
                raise FastqError(self.name, None, "is empty (no reads)")
            return None
        start = self.line
        if not header.startswith("@"):
            raise FastqError(self.name, start,
                             f"a record must start with '@', found {header[:30].rstrip()!r}")
        seq = self._readline()
        plus = self._readline()
        qual = self._readline()
        if not qual:
            raise FastqError(self.name, start,
                             "the last record is incomplete (the file is truncated)")
        seq, plus, qual = seq.rstrip("\r\n"), plus.rstrip("\r\n"), qual.rstrip("\r\n")
        if not plus.startswith("+"):
            raise FastqError(self.name, start + 2,
                             f"separator line must start with '+', found {plus[:30]!r}")
        if not seq:
            raise FastqError(self.name, start + 1, "the sequence is empty")
        if not _SEQ_OK.issuperset(seq.encode("ascii")):
            bad = next(c for c in seq if ord(c) not in _SEQ_OK)
            raise FastqError(self.name, start + 1, f"sequence contains {bad!r}")
        if len(qual) != len(seq):
            raise FastqError(self.name, start + 3,
                             f"quality line is {len(qual)} characters, sequence is {len(seq)}")
        if min(qual) < "!" or max(qual) > "~":
            raise FastqError(self.name, start + 3, "quality line has characters outside '!'..'~'")
        self.records += 1
        return header[1:].rstrip("\r\n"), seq, qual


def read_pairs(r1: FastqReader, r2: FastqReader, chunk_size: int = 20_000
               ) -> Iterator[list[ReadPair]]:
    """Yield lists of up to ``chunk_size`` mate pairs, read in lockstep from both files."""
    chunk: list[ReadPair] = []
    while True:
        a = r1.read()
        b = r2.read()
        if a is None and b is None:
            break
        if a is None or b is None:
            short, other = (r1, r2) if a is None else (r2, r1)
            raise FastqError(short.name, short.line,
                             f"ends after {short.records} reads but {other.name} has more: "
                             "the mates are out of step")
        name1, name2 = mate_name(a[0]), mate_name(b[0])
        if name1 != name2:
            raise FastqError(r2.name, r2.line - 3,
                             f"mate name {name2!r} does not match {name1!r} at {r1.name} line "
                             f"{r1.line - 3}: the mates are out of step")
        chunk.append(ReadPair(name1, a[1].upper(), a[2], b[1].upper(), b[2]))
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
