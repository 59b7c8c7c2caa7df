"""HTTP Range requests on genomics file downloads: 206 single and multipart, 416, If-Range."""

from __future__ import annotations

import email.parser
import hashlib

import pytest
from fastapi.testclient import TestClient

from careplane.genomics.ranges import MAX_RANGES, Unsatisfiable, parse_ranges
from careplane.security import Role
from tests.conftest import Accounts


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("bytes=0-9", [(0, 10)]),
    ("bytes=990-2000", [(990, 1000)]),  # clipped to the end
    ("bytes=995-", [(995, 1000)]),
    ("bytes=-5", [(995, 1000)]),
    ("bytes=-5000", [(0, 1000)]),
    ("bytes=0-0, -1, 10-19", [(0, 1), (999, 1000), (10, 20)]),
    ("bytes=1000-, 5-6", [(5, 7)]),  # unsatisfiable parts are dropped
    ("items=0-9", None),  # another unit: ignored
    ("bytes=9-5", None),  # an invalid range invalidates the header
    ("bytes=a-b", None),
    ("bytes=-", None),
    ("bytes=", None),
    ("bytes=" + ",".join(["0-1"] * (MAX_RANGES + 1)), None),  # too many: whole file
])
def test_parse_ranges(header: str | None, expected: list[tuple[int, int]] | None) -> None:
    assert parse_ranges(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=-0", "bytes=2000-3000, 1000-"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_ranges(header, 1000)


def test_downloads_honour_range_requests(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("gina", Role.clinician)
    data = b"@r1\n" + b"A" * 5000 + b"\n+\n" + b"I" * 5000 + b"\n"
    uploaded = client.post("/api/genomics/files", params={"filename": "r.fq"}, content=data,
                           headers=nurse.headers)
    assert uploaded.status_code == 201, uploaded.text
    url = f"/api/genomics/files/{uploaded.json()['id']}/content"
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    whole = client.get(url, headers=nurse.headers)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["ETag"] == etag

    one = client.get(url, headers={**nurse.headers, "Range": "bytes=4-13"})
    assert one.status_code == 206 and one.content == data[4:14]
    assert one.headers["Content-Range"] == f"bytes 4-13/{len(data)}"
    assert one.headers["Content-Length"] == "10"
    tail = client.get(url, headers={**nurse.headers, "Range": "bytes=-3"})
    assert tail.status_code == 206 and tail.content == data[-3:]

    several = client.get(url, headers={**nurse.headers, "Range": "bytes=0-3, 5000-5009, -2"})
    assert several.status_code == 206
    kind = several.headers["Content-Type"]
    assert kind.startswith("multipart/byteranges; boundary=")
    assert int(several.headers["Content-Length"]) == len(several.content)
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + kind.encode() + b"\r\n\r\n" + several.content)
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.get_payload()]
    size = len(data)
    assert parts == [(f"bytes 0-3/{size}", data[0:4]),
                     (f"bytes 5000-5009/{size}", data[5000:5010]),
                     (f"bytes {size - 2}-{size - 1}/{size}", data[-2:])]

    beyond = client.get(url, headers={**nurse.headers, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    # If-Range with the current tag gets the range; with another, the whole (newer) file.
    same = client.get(url, headers={**nurse.headers, "Range": "bytes=0-1", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[:2]
    stale = client.get(url, headers={**nurse.headers, "Range": "bytes=0-1",
                                     "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == data
    ignored = client.get(url, headers={**nurse.headers, "Range": "bytes=9-2"})
    assert ignored.status_code == 200 and ignored.content == data
