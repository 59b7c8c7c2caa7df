"""Two API workers on one PostgreSQL database: an event published by either reaches both."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from careplane.platform.db import Database
from careplane.platform.jobs import submit
from tests.conftest import Accounts
from tests.support.servers import running_server


def _listen(base: str, headers: dict[str, str], want: int, out: list[dict[str, object]],
            connected: threading.Event) -> None:
    with httpx.stream("GET", f"{base}/api/events/stream", params={"topic": "job."},
                      headers=headers, timeout=30) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith(": connected"):
                connected.set()
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if len(out) >= want:
                    return


@pytest.mark.slow
def test_event_published_on_one_worker_reaches_both(postgres_db_url: str,
                                                    tmp_path: Path) -> None:
    postgres_url = postgres_db_url
    db = Database(postgres_url)
    try:
        user = Accounts(db).make("nurse")
        with db.session() as session:
            first = submit(session, "tests.platform.job_tasks:add", {"a": 1, "b": 2},
                           org_id=user.org_id, title="first").id
            second = submit(session, "tests.platform.job_tasks:add", {"a": 3, "b": 4},
                            org_id=user.org_id, title="second").id
    finally:
        db.dispose()
    with running_server(postgres_url, tmp_path / "a") as a, \
            running_server(postgres_url, tmp_path / "b") as b:
        received: dict[str, list[dict[str, object]]] = {a: [], b: []}
        ready = {a: threading.Event(), b: threading.Event()}
        listeners = [threading.Thread(target=_listen, args=(base, user.headers, 2,
                                                            received[base], ready[base]))
                     for base in (a, b)]
        for thread in listeners:
            thread.start()
        assert all(ready[base].wait(20) for base in (a, b))
        # One change through worker A, the other through worker B.
        started = time.monotonic()
        assert httpx.post(f"{a}/api/jobs/{first}/cancel", headers=user.headers).status_code == 200
        assert httpx.post(f"{b}/api/jobs/{second}/cancel",
                          headers=user.headers).status_code == 200
        for thread in listeners:
            thread.join(20)
        # LISTEN/NOTIFY delivers at once; the fallback poll (every 5 s) would be too slow.
        assert time.monotonic() - started < 3.0
        for base in (a, b):
            got = [(e["id"], e["status"]) for e in received[base]]
            assert got == [(first, "cancelled"), (second, "cancelled")], base
