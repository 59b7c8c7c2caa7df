"""HTTP Range requests on stored files (RFC 9110 section 14): partial content from a blob.

Why it exists: genome files are large and their readers (samtools/htslib over HTTP, htsget
clients, genome browsers) fetch the index and then only the blocks they need, with ``Range``
headers. :func:`ranged_response` answers a download with the whole file (200), one range
(206 with ``Content-Range``), several ranges (206 ``multipart/byteranges``) or, when no range
can be satisfied, 416 with ``Content-Range: bytes */SIZE``. A header that does not parse, a
unit other than bytes, an ``If-Range`` that names another version, or more than
:data:`MAX_RANGES` ranges is ignored, as the RFC allows, and the whole file is sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

from fastapi.responses import Response, StreamingResponse

__all__ = ["MAX_RANGES", "parse_ranges", "ranged_response"]

MAX_RANGES = 64


class Unsatisfiable(ValueError):
    """Every requested range lies beyond the end of the file."""


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges of a ``Range`` header as ``[start, end)`` pairs, in the order asked.

    ``None`` means "send the whole file" (no header, or one to ignore); raises
    :class:`Unsatisfiable` when the header is valid but no range overlaps the file.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for part in parts:
        first, dash, last = part.partition("-")
        if not dash or not (first or last) or (first and not first.isdigit()) \
                or (last and not last.isdigit()):
            return None  # malformed: ignore the whole header
        if not first:  # a suffix: the last N bytes
            length = int(last)
            if length == 0 or size == 0:
                continue
            ranges.append((max(0, size - length), size))
            continue
        start = int(first)
        if last and int(last) < start:
            return None  # RFC 9110: an invalid range makes the header invalid
        if start >= size:
            continue
        end = size if not last else min(size, int(last) + 1)
        ranges.append((start, end))
    if not ranges:
        raise Unsatisfiable(header)
    return ranges


def ranged_response(range_header: str | None, if_range: str | None, *, size: int,
                    etag: str, media_type: str, headers: dict[str, str],
                    read: Callable[[int, int | None], Iterator[bytes]]) -> Response:
    """The response to a download of ``size`` bytes, honouring ``Range`` and ``If-Range``.

    ``read(start, end)`` streams bytes ``[start, end)`` of the file (``end=None``: to its end);
    ``etag`` is the file's strong entity tag (quoted).
    """
    base = {**headers, "Accept-Ranges": "bytes", "ETag": etag}
    ranges: list[tuple[int, int]] | None = None
    if range_header and (if_range is None or if_range.strip() == etag):
        try:
            ranges = parse_ranges(range_header, size)
        except Unsatisfiable:
            return Response(status_code=416, headers={**base,
                                                      "Content-Range": f"bytes */{size}"})
    if ranges is None:
        return StreamingResponse(read(0, None), media_type=media_type,
                                 headers={**base, "Content-Length": str(size)})
    if len(ranges) == 1:
        start, end = ranges[0]
        return StreamingResponse(
            read(start, end), status_code=206, media_type=media_type,
            headers={**base, "Content-Length": str(end - start),
                     "Content-Range": f"bytes {start}-{end - 1}/{size}"})
    boundary = secrets.token_hex(16)
    heads = [(f"--{boundary}\r\nContent-Type: {media_type}\r\n"
              f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n").encode("ascii")
             for start, end in ranges]
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(h) for h in heads) + sum(e - s for s, e in ranges) \
        + 2 * (len(ranges) - 1) + len(tail)

    def body() -> Iterator[bytes]:
        for i, ((start, end), head) in enumerate(zip(ranges, heads, strict=True)):
            yield (b"\r\n" if i else b"") + head
            yield from read(start, end)
        yield tail

    return StreamingResponse(
        body(), status_code=206,
        media_type=f"multipart/byteranges; boundary={boundary}",
        headers={**base, "Content-Length": str(length)})
