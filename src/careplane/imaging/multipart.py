"""multipart/related (RFC 2387) in both directions, streamed.

STOW-RS bodies can carry gigabytes of images; parts are spooled to temporary files as they
arrive (memory holds at most one read buffer and a small spool). WADO-RS responses are written
as a generator of chunks straight from the blob store.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Protocol

__all__ = ["MultipartError", "Part", "Sink", "media_params", "multipart_body", "new_boundary",
           "parse_multipart"]

_SPOOL = 32 * 1024 * 1024
_MAX_HEADER = 16 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart/related."""


def media_params(content_type: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` in lower case and the parameters of a Content-Type or Accept item."""
    message = Message()
    message["content-type"] = content_type
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return message.get_content_type(), {k: str(v) for k, v in params.items()}


class Sink(Protocol):
    """Receives a part's bytes as they arrive (e.g. to store them while receiving)."""

    def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # closed by Part.close


@dataclass
class Part:
    headers: dict[str, str]
    body: IO[bytes] = field(default_factory=_spool)
    size: int = 0
    sink: Sink | None = None

    def write(self, data: bytes) -> None:
        """Keep the bytes: in the sink if there is one (which then owns them), else here."""
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        else:
            self.body.write(data)

    @property
    def content_type(self) -> str:
        return media_params(self.headers.get("content-type", "application/octet-stream"))[0]

    def close(self) -> None:
        self.body.close()


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _take(buf: bytearray, count: int) -> bytes:
    """Remove and return the first ``count`` bytes of ``buf``, copying them once."""
    with memoryview(buf) as view:
        data = bytes(view[:count])
    del buf[:count]
    return data


async def parse_multipart(stream: AsyncIterator[bytes], boundary: str, *,
                          max_bytes: int,
                          sink: Callable[[dict[str, str]], Sink | None] | None = None
                          ) -> AsyncIterator[Part]:
    """Yield each part, its body complete and rewound, as soon as its closing boundary arrives.

    The caller owns (and closes) each part. ``max_bytes`` bounds the whole body. ``sink``
    (given the part's headers) may return a receiver that takes the part's bytes instead of
    the part's own body.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("the Content-Type has no usable boundary parameter")
    opening = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + opening
    buf = bytearray(b"\r\n")  # so the first boundary is found like every later one
    total = 0
    state = "preamble"
    part: Part | None = None
    finished = False
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes:
                raise MultipartError(f"the body exceeds the limit of {max_bytes} bytes")
            if finished:
                continue  # epilogue
            buf += chunk
            while True:
                if state == "preamble":
                    at = buf.find(delimiter)
                    if at < 0:
                        del buf[: max(0, len(buf) - len(delimiter))]
                        break
                    del buf[: at + len(delimiter)]
                    state = "after-boundary"
                if state == "after-boundary":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        finished = True
                        break
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEADER:
                            raise MultipartError("a part's headers are too long")
                        break
                    line_end = buf.find(b"\r\n")
                    if buf[:line_end].strip(b" \t"):
                        raise MultipartError("unexpected data after a boundary")
                    part = Part(_parse_headers(bytes(buf[line_end + 2: end])))
                    part.sink = sink(part.headers) if sink is not None else None
                    del buf[: end + 4]
                    state = "body"
                if state == "body":
                    assert part is not None
                    at = buf.find(delimiter)
                    if at < 0:
                        keep = len(delimiter)
                        if len(buf) > keep:
                            part.write(_take(buf, len(buf) - keep))
                        break
                    part.write(_take(buf, at))
                    del buf[: len(delimiter)]
                    part.body.seek(0)
                    done, part = part, None
                    state = "after-boundary"
                    yield done
        if not finished:
            raise MultipartError("the body ended before the closing boundary")
    finally:
        if part is not None:
            if part.sink is not None:
                part.sink.abort()
            part.close()


def new_boundary() -> str:
    return f"careplane-{secrets.token_hex(16)}"


def multipart_body(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str
                   ) -> Iterator[bytes]:
    """The chunks of a multipart/related body from (headers, body chunks) pairs."""
    opening = f"--{boundary}\r\n".encode("latin-1")
    for headers, chunks in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        yield opening + head.encode("latin-1") + b"\r\n"
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
