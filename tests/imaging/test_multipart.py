"""multipart/related parsing and writing, streamed in arbitrary chunk sizes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from careplane.imaging.multipart import (
    MultipartError,
    media_params,
    multipart_body,
    parse_multipart,
)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def _parse(data: bytes, boundary: str, size: int, max_bytes: int = 10**9
           ) -> list[tuple[dict[str, str], bytes]]:
    async def run() -> list[tuple[dict[str, str], bytes]]:
        out = []
        async for part in parse_multipart(_chunks(data, size), boundary, max_bytes=max_bytes):
            out.append((part.headers, part.body.read()))
            part.close()
        return out
    return asyncio.run(run())


@pytest.mark.parametrize("size", [1, 7, 64, 100000])
def test_round_trip_in_any_chunking(size: int) -> None:
    bodies = [b"first\r\n--not-the-boundary", b"", b"\r\n--bound" * 50 + b"x"]
    parts = [({"Content-Type": "application/dicom"}, [b]) for b in bodies]
    data = b"preamble text\r\n" + b"".join(multipart_body(parts, "bound-ary")) + b"epilogue"
    parsed = _parse(data, "bound-ary", size)
    assert [p[1] for p in parsed] == bodies
    assert parsed[0][0] == {"content-type": "application/dicom"}


def test_missing_closing_boundary_and_limits() -> None:
    data = b"--b\r\nContent-Type: application/dicom\r\n\r\nabc\r\n"
    with pytest.raises(MultipartError, match="closing boundary"):
        _parse(data, "b", 5)
    with pytest.raises(MultipartError, match="limit"):
        _parse(data + b"x" * 100, "b", 5, max_bytes=50)
    with pytest.raises(MultipartError, match="boundary"):
        _parse(data, "", 5)


def test_media_params() -> None:
    media, params = media_params('Multipart/Related; type="application/dicom"; boundary=abc')
    assert media == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "abc"}
