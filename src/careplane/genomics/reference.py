"""Reference genomes: checked once, indexed once (``.fai`` for samtools/bcftools, a minimap2
``.mmi`` through mappy, and the BWA index when BWA is chosen), then reused by every run.

Why it exists: building a minimap2 index for a human genome takes minutes and gigabytes; doing
it per run would dominate the pipeline. Each reference gets an index directory holding the FASTA
(a symbolic link to an immutable file, or a decompressed copy of a gzipped one), its indexes and
a small manifest naming the source they were built from, so a changed source is re-indexed
rather than silently mismatched. A file lock serialises concurrent builders (two runs starting
at once on a fresh reference build it once).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mappy
import pysam

__all__ = ["Reference", "ReferenceError", "default_index_dir", "prepare_reference",
           "validate_fasta"]

_BASES = frozenset(b"ACGTUNRYKMSWBDHVacgtunrykmswbdhv-*")
_MANIFEST = "manifest.json"
_VERSION = 1


class ReferenceError(ValueError):
    """The reference cannot be used; the message names the file (and line, where known)."""


@dataclass(frozen=True)
class Reference:
    """An indexed reference: the paths every pipeline step needs, and its contigs in order."""

    fasta: Path
    fai: Path
    mmi: Path
    contigs: tuple[tuple[str, int], ...]
    source: str

    @property
    def length(self) -> int:
        return sum(n for _, n in self.contigs)

    def bwa_index(self) -> Path:
        """Build (once) and return the BWA index prefix; needs the ``bwa`` program."""
        prefix = self.fasta
        if not Path(f"{prefix}.bwt").exists():
            with _locked(self.fasta.parent):
                if not Path(f"{prefix}.bwt").exists():
                    if shutil.which("bwa") is None:
                        raise ReferenceError("the bwa aligner was chosen but `bwa` is not "
                                             "installed")
                    subprocess.run(["bwa", "index", str(prefix)], check=True,
                                   capture_output=True)
        return prefix


def default_index_dir(fasta: str | Path) -> Path:
    """A per-user cache directory keyed by the file's path, size and modification time."""
    path = Path(fasta).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "careplane" / "references" / key


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def validate_fasta(path: str | Path, display: str | None = None) -> list[tuple[str, int]]:
    """Check a (plain or gzipped) FASTA line by line; return its contigs and lengths."""
    source = Path(path)
    name = display or str(source)
    contigs: list[tuple[str, int]] = []
    seen: set[str] = set()
    current: str | None = None
    length = 0
    opener = gzip.open if _is_gzip(source) else open
    line_no = 0
    try:
        with opener(source, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\r\n")
                if line.startswith(b">"):
                    if current is not None:
                        if length == 0:
                            raise ReferenceError(
                                f"{name} line {line_no - 1}: contig {current!r} has no sequence")
                        contigs.append((current, length))
                    words = line[1:].split()
                    if not words:
                        raise ReferenceError(f"{name} line {line_no}: header has no name")
                    current = words[0].decode("ascii", "replace")
                    if current in seen:
                        raise ReferenceError(
                            f"{name} line {line_no}: contig name {current!r} is repeated")
                    seen.add(current)
                    length = 0
                elif not line:
                    continue
                elif current is None:
                    raise ReferenceError(f"{name} line {line_no}: a FASTA file must start with "
                                         "a '>' header line (is this a FASTA file?)")
                else:
                    if not _BASES.issuperset(line):
                        bad = next(chr(c) for c in line if c not in _BASES)
                        raise ReferenceError(f"{name} line {line_no}: {bad!r} is not a "
                                             "nucleotide code")
                    length += len(line)
    except (EOFError, OSError) as exc:
        raise ReferenceError(f"{name} line {line_no + 1}: cannot be read ({exc})") from exc
    if current is None:
        raise ReferenceError(f"{name}: is empty (no '>' header line)")
    if length == 0:
        raise ReferenceError(f"{name} line {line_no}: contig {current!r} has no sequence")
    contigs.append((current, length))
    return contigs


def _source_key(source: Path) -> dict[str, object]:
    st = source.stat()
    return {"source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "version": _VERSION}


def _read_fai(fai: Path) -> tuple[tuple[str, int], ...]:
    out = []
    for line in fai.read_text().splitlines():
        fields = line.split("\t")
        out.append((fields[0], int(fields[1])))
    return tuple(out)


def prepare_reference(fasta: str | Path, index_dir: str | Path,
                      display: str | None = None) -> Reference:
    """Return the indexed reference, validating and indexing it first if not done already."""
    source = Path(fasta).resolve()
    name = display or str(fasta)
    if not source.is_file():
        raise ReferenceError(f"{name}: no such file")
    directory = Path(index_dir)
    target = directory / "reference.fa"
    fai = directory / "reference.fa.fai"
    mmi = directory / "reference.sr.mmi"
    manifest = directory / _MANIFEST
    key = _source_key(source)
    with _locked(directory):
        current = None
        if manifest.exists():
            with contextlib.suppress(ValueError):
                current = json.loads(manifest.read_text())
        if current != key or not (target.exists() and fai.exists() and mmi.exists()):
            validate_fasta(source, name)
            for stale in directory.glob("reference.*"):
                stale.unlink()
            manifest.unlink(missing_ok=True)
            if _is_gzip(source):
                with gzip.open(source, "rb") as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                target.symlink_to(source)
            pysam.faidx(str(target))
            tmp_mmi = directory / "reference.sr.mmi.part"
            aligner = mappy.Aligner(str(target), preset="sr", fn_idx_out=str(tmp_mmi))
            if not aligner:
                raise ReferenceError(f"{name}: minimap2 could not index it")
            del aligner
            os.replace(tmp_mmi, mmi)
            manifest.write_text(json.dumps(key))
    return Reference(fasta=target, fai=fai, mmi=mmi, contigs=_read_fai(fai), source=name)
