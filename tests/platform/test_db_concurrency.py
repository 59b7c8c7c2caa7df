"""Many clients at once against one server: on SQLite too, nobody is turned away.

Every audited read writes its audit record, so concurrent reads and writes all need SQLite's
one write lock; each must wait its turn (the busy timeout), not fail with "database is
locked" — which a deferred transaction gets at once when another commit made its snapshot
stale. Viewers such as OHIF send dozens of requests in parallel.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from careplane.platform.db import Database
from careplane.records.models import resource
from careplane.security import Role
from careplane.security.audit import AuditRecord, verify
from careplane.security.identity import revoke_token
from careplane.security.models import AuthToken
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


def _transaction(family: str, observations: int) -> bytes:
    patient = f"urn:uuid:{uuid.uuid4()}"
    entry = [{"fullUrl": patient, "resource": {"resourceType": "Patient",
                                                "name": [{"family": family}]},
              "request": {"method": "POST", "url": "Patient"}}]
    entry += [{"resource": {"resourceType": "Observation", "status": "final",
                            "code": {"text": "pulse"}, "subject": {"reference": patient},
                            "valueQuantity": {"value": 60 + i, "unit": "/min"}},
               "request": {"method": "POST", "url": "Observation"}}
              for i in range(observations)]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entry})


def _worker_processes(base: str) -> list[int]:
    """The processes ``careplane serve`` started to answer HTTP on ``base``'s port."""
    port = base.rsplit(":", 1)[1]
    serving = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and f"\0--port\0{port}\0" in _cmdline(p)]
    assert len(serving) == 1, serving
    found = []
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        if p.name.isdigit() and stat.rsplit(")", 1)[1].split()[1] == serving[0].name \
                and "spawn_main" in _cmdline(p):
            found.append(int(p.name))
    return found


def _cmdline(p: Path) -> str:
    try:
        return "\0" + (p / "cmdline").read_text() + "\0"
    except OSError:
        return ""


def test_several_http_workers_write_at_once_into_one_store(
        db_url: str, accounts: Accounts, db: Database, tmp_path: Path) -> None:
    """``--http-workers 2``: two processes answer, transaction bundles from clients at once
    all commit, the audit chain stays one chain, and a revoked token is refused by both."""
    account = accounts.make("feeder", Role.clinician)
    headers = {**account.headers, "Content-Type": "application/fhir+json",
               "Prefer": "return=minimal"}
    with running_server(db_url, tmp_path / "data", http_workers=2) as base:
        assert len(_worker_processes(base)) == 2
        statuses: list[int] = []
        lock = threading.Lock()

        def feed(n: int) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                for i in range(3):
                    r = c.post("/fhir", content=_transaction(f"Feed{n}x{i}", 5))
                    with lock:
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=feed, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 12
        with db.session() as session:
            token_id = session.scalar(select(AuthToken.id).where(
                AuthToken.user_id == account.user_id))
            assert token_id is not None
            revoke_token(session, token_id)
        refused = {httpx.get(f"{base}/fhir/Patient", headers=headers).status_code
                   for _ in range(12)}  # a connection each: either worker may answer
        assert refused == {401}
    with db.session() as session:
        assert verify(session).ok
        changes = session.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.actor_name == "feeder", AuditRecord.action == "create"))
        # one record per bundle for its Patient, one for its five Observations
        assert changes == 12 * 2
        stored = session.scalar(select(func.count()).select_from(resource))
    assert stored == 12 * 6


def _holder(workers: list[int], port: int, client_port: int) -> int | None:
    """Which of ``workers`` holds the server's end of the connection from ``client_port``."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == port and int(remote, 16) == client_port:
            inode = fields[9]
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_connections_that_arrive_together_are_shared_by_the_http_workers(
        db_url: str, accounts: Accounts, tmp_path: Path) -> None:
    """Two feeds that connect at the same moment and each keep their connection are
    answered by different workers (one worker would otherwise do both's work on one core,
    as it did in most such runs before the workers shared their connections)."""
    account = accounts.make("feeds", Role.clinician)
    headers = {**account.headers, "Content-Type": "application/fhir+json",
               "Prefer": "return=minimal"}
    with running_server(db_url, tmp_path / "data", http_workers=2) as base:
        workers = _worker_processes(base)
        port = int(base.rsplit(":", 1)[1])
        log = tmp_path / "data" / f"server-{port}.log"
        deadline = time.monotonic() + 60  # /readyz answered: one worker serves; wait for both
        while log.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(0.2)  # it listens just after it says so

        def feed(n: int) -> int | None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/fhir", body=_transaction(f"Together{n}", 40),
                         headers=headers)
            answer = conn.getresponse()
            assert answer.status == 200, answer.read()[:300]
            answer.read()
            holder = _holder(workers, port, conn.sock.getsockname()[1])
            conn.close()
            return holder

        shared = []
        with ThreadPoolExecutor(2) as pool:
            for n in range(8):
                holders = set(pool.map(feed, (2 * n, 2 * n + 1)))
                assert None not in holders
                shared.append(len(holders) == 2)
                time.sleep(0.2)  # the workers see the connections closed
        # a worker held up past the patience (20 ms) on a busy machine may take both
        assert shared.count(True) >= 7, shared
