"""Many clients at once against one server: on SQLite too, nobody is turned away.

Every audited read writes its audit record, so concurrent reads and writes all need SQLite's
one write lock; each must wait its turn (the busy timeout), not fail with "database is
locked" — which a deferred transaction gets at once when another commit made its snapshot
stale. Viewers such as OHIF send dozens of requests in parallel.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import orjson

from careplane.security import Role
from tests.conftest import Accounts
from tests.support.servers import running_server

CLIENTS = 8
REQUESTS = 30


def test_parallel_reads_and_writes_all_succeed(db_url: str, accounts: Accounts,
                                               tmp_path: Path) -> None:
    headers = {**accounts.make("ward-doc", Role.clinician).headers,
               "Content-Type": "application/fhir+json"}
    with running_server(db_url, tmp_path / "data") as base:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            r = client.post("/fhir/Patient", content=orjson.dumps(
                {"resourceType": "Patient", "name": [{"family": "Busy"}]}))
            assert r.status_code == 201, r.text
            pid = r.json()["id"]
        statuses: list[int] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                for i in range(REQUESTS):
                    if (n + i) % 4 == 0:
                        r = c.post("/fhir/Observation", content=orjson.dumps({
                            "resourceType": "Observation", "status": "final",
                            "code": {"text": "pulse"}, "subject": {"reference": f"Patient/{pid}"}}))
                    else:
                        r = c.get(f"/fhir/Patient/{pid}")
                    with lock:
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(statuses) == CLIENTS * REQUESTS
        assert sorted(set(statuses)) == [200, 201], {s: statuses.count(s) for s in set(statuses)}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            found = client.get("/fhir/Observation", params={"subject": f"Patient/{pid}",
                                                             "_total": "accurate"}).json()
        assert found["total"] == statuses.count(201)
