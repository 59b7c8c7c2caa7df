"""Conformance against the specification's own examples (``hl7.fhir.r4.examples@4.0.1``).

Every example is stored through the API (transaction bundles of PUTs, keeping the examples'
ids so that their references between each other hold), read back and compared with what was
sent; then each spec SearchParameter that indexes a value of an example must find that
example by that value. Examples that break R4's own rules are refused with an OperationOutcome
that names the path, and nothing of them is stored.

The care examples (705 resources: everything but the conformance and terminology modules)
are committed as ``data/r4_examples.ndjson.gz`` and always run, on both databases. The whole
package (5,306 resources, about a minute on SQLite and two on PostgreSQL) runs on request:

    CAREPLANE_FHIR_CONFORMANCE=full .venv/bin/pytest tests/records/test_conformance.py
    # CAREPLANE_FHIR_CONFORMANCE_DB=postgresql+psycopg://.../empty_db for PostgreSQL

with the package packed by npm from its local cache, never from the network.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from careplane.app import create_app
from careplane.platform.db import Database, migrate
from careplane.records.indexer import index_resource
from careplane.records.models import resource as resource_table
from careplane.records.search import run_search
from careplane.records.search_params import parse_search
from careplane.security import Principal, Role
from careplane.settings import Settings
from tests.conftest import Accounts
from tests.records.conftest import Fhir

DATA = Path(__file__).parent / "data" / "r4_examples.ndjson.gz"
PACKAGE = "hl7.fhir.r4.examples@4.0.1"
CHUNK = 150
MAX_CHUNK_BYTES = 8_000_000
# The examples in the package that break R4's own rules: a Questionnaire without linkIds,
# SearchParameters without a base (one also with a 67-character id), an ImplementationGuide
# without name and status, a CodeSystem (and the Bundle carrying it) whose codes hold double
# spaces.
PACKAGE_INVALID = 15


@pytest.fixture(scope="session")
def care_examples() -> list[dict[str, Any]]:
    if not DATA.exists():
        pytest.skip(f"{DATA} is absent: run tools/fhir_extract.py examples --subset care")
    with gzip.open(DATA) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def package_examples(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if os.environ.get("CAREPLANE_FHIR_CONFORMANCE") != "full":
        pytest.skip("the whole-package run takes minutes: set CAREPLANE_FHIR_CONFORMANCE=full")
    out = tmp_path_factory.mktemp("r4-package")
    try:
        done = subprocess.run(["npm", "pack", PACKAGE, "--offline", "--silent"], cwd=out,
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"npm cannot pack {PACKAGE} offline: {exc}")
    tarballs = list(out.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        pytest.skip(f"{PACKAGE} is not in the local npm cache (npm pack --offline failed)")
    examples = []
    with tarfile.open(tarballs[0]) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json") and not member.name.endswith("package.json"):
                handle = tar.extractfile(member)
                if handle is not None:
                    data = json.load(handle)
                    if "resourceType" in data:
                        examples.append(data)
    return examples


def _decimals(node: Any) -> Any:
    """Numbers as the decimals FHIR means: PostgreSQL's JSONB keeps a decimal's value exactly
    but may write it differently (-1e+245 comes back as its 246 digits)."""
    if isinstance(node, dict):
        return {k: _decimals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decimals(v) for v in node]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return Decimal(repr(node)).normalize()
    return node


def _without_stamp(res: dict[str, Any]) -> dict[str, Any]:
    """The resource minus what the server sets (meta.versionId, meta.lastUpdated)."""
    out = dict(res)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items()
            if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return _decimals(out)


def _latest(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for ex in examples:
        latest[(ex["resourceType"], ex["id"])] = ex  # the package has one id twice
    return list(latest.values())


def _chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Runs of at most CHUNK resources and about MAX_CHUNK_BYTES of JSON."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for item in items:
        item_size = len(json.dumps(item))
        if chunk and (len(chunk) >= CHUNK or size + item_size > MAX_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


_FAILED_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\]")


# The server's AuditEvents are its audit trail, written by the server alone (security issue):
# the package's AuditEvent examples are refused as writes, and are not part of the round trip.
READ_ONLY_TYPES = frozenset({"AuditEvent"})


# A privacy Consent is enforced from the moment it is stored (security issue), and several of
# the package's deny everyone who is not named: they are loaded after the round trip and the
# searches, and read back by break-the-glass, as a clinician would in an emergency.
ENFORCED_TYPES = frozenset({"Consent"})
_BREAK_GLASS = {"X-Break-Glass-Reason": "conformance check of stored consents"}


def _consents_enforced(fhir: Fhir, examples: list[dict[str, Any]]
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Store each Consent example on its own, read the stored ones back, compare.

    Returns (stored, refused); each refusal must name the element it refuses."""
    stored: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for ex in _latest(examples):
        if ex["resourceType"] not in ENFORCED_TYPES:
            continue
        r = fhir.put(f"Consent/{ex['id']}", ex)
        if r.status_code in (200, 201):
            stored.append(ex)
            continue
        assert r.status_code in (400, 422), r.text[:500]
        assert r.json()["issue"][0].get("expression"), r.text  # the refusal names the path
        refused.append(ex)
    for ex in stored:
        got = fhir.get(f"Consent/{ex['id']}", headers=_BREAK_GLASS)
        assert got.status_code == 200, got.text[:500]
        assert _without_stamp(got.json()) == _without_stamp(ex), ex["id"]
    return stored, refused


def _refused_as_read_only(fhir: Fhir, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples of read-only types, each checked to be refused with 405."""
    read_only = [ex for ex in _latest(examples) if ex["resourceType"] in READ_ONLY_TYPES]
    for ex in read_only:
        r = fhir.put(f"{ex['resourceType']}/{ex['id']}", ex)
        assert r.status_code == 405, r.text[:500]
        assert r.json()["resourceType"] == "OperationOutcome"
    return read_only


def _load_and_read_back(fhir: Fhir, examples: list[dict[str, Any]]
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Store every example (refused ones are set aside), read them back, compare."""
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    writable = [ex for ex in _latest(examples)
                if ex["resourceType"] not in READ_ONLY_TYPES | ENFORCED_TYPES]
    for chunk in _chunks(writable):
        while chunk:
            tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": ex, "request": {"method": "PUT",
                                             "url": f"{ex['resourceType']}/{ex['id']}"}}
                for ex in chunk]}
            r = fhir.post("", tx)
            if r.status_code == 200:
                valid += chunk
                break
            assert r.status_code in (400, 422), r.text[:2000]
            issue = r.json()["issue"][0]
            assert issue.get("expression"), issue  # the refusal names the path
            failed = _FAILED_ENTRY.search(issue["diagnostics"] + " ".join(issue["expression"]))
            assert failed, issue
            invalid.append(chunk.pop(int(failed.group(1))))
    for ex in invalid:  # refused on its own too, and nothing of it stored
        assert fhir.put(f"{ex['resourceType']}/{ex['id']}", ex).status_code in (400, 422)
        assert fhir.get(f"{ex['resourceType']}/{ex['id']}").status_code == 404
    for chunk in _chunks(valid):
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"{ex['resourceType']}/{ex['id']}"}}
            for ex in chunk]}
        answer = fhir.post("", batch).json()
        assert "entry" in answer, str(answer)[:1000]
        out = answer["entry"]
        for ex, got in zip(chunk, out, strict=True):
            assert got["response"]["status"] == "200 OK", got
            assert _without_stamp(got["resource"]) == _without_stamp(ex), ex["id"]
    return valid, invalid


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|") \
        .replace("$", "\\$")


def _query_value(kind: str, row: dict[str, Any]) -> str | None:
    """A search value that the indexed ``row`` must match, in the query syntax of its type."""
    if kind == "string":
        return f"{_escape(row['exact'])}" if row["exact"].strip() else None
    if kind == "token":
        if row["code"] is None:
            return None
        if row["param"].endswith(":of-type"):  # system holds the type's system|code
            return f"{row['system']}|{_escape(row['code'])}"
        system = _escape(row["system"]) if row["system"] else ""
        return f"{system}|{_escape(row['code'])}"
    if kind == "reference":
        if row["target_type"] and row["target_id"]:
            return f"{row['target_type']}/{row['target_id']}"
        return _escape(row["url"]) if row["url"] else None
    if kind == "uri":
        return _escape(row["value"])
    if kind == "composite":
        head = f"{_escape(row['a_system'] or '')}|{_escape(row['a_code'])}"
        if row["low"] is not None and row["low"] == row["high"] \
                and abs(row["low"]) != float("inf"):
            tail = repr(float(row["low"]))
            if row["code"]:
                tail += f"|{_escape(row['system'] or '')}|{_escape(row['code'])}"
            return f"{head}${tail}"
        if row["code"] and row["low"] is None:
            return f"{head}${_escape(row['system'] or '')}|{_escape(row['code'])}"
        return None
    if kind in ("number", "quantity"):
        if row["low"] != row["high"] or abs(row["low"]) == float("inf"):
            return None
        number = repr(float(row["low"]))
        if kind == "quantity" and row["code"]:
            return f"{number}|{_escape(row['system'] or '')}|{_escape(row['code'])}"
        return number
    return None


def _searches(examples: list[dict[str, Any]], per_param: int) -> list[tuple[str, str, list[
        tuple[str, str]]]]:
    """(type, id, query) triples: each indexed parameter, a few examples that have a value."""
    taken: dict[tuple[str, str], int] = {}
    out = []
    for ex in examples:
        indexed = index_resource(ex)
        for kind, rows in indexed.rows.items():
            for row in rows:
                key = (ex["resourceType"], row["param"])
                if taken.get(key, 0) >= per_param:
                    continue
                if kind == "date":
                    query = [(row["param"], "ge" + row["low"].isoformat()),
                             (row["param"], "le" + row["high"].isoformat())]
                else:
                    value = _query_value(kind, row)
                    if value is None:
                        continue
                    query = [(row["param"], value)]
                taken[key] = taken.get(key, 0) + 1
                out.append((ex["resourceType"], ex["id"], query))
    return out


def _found_by_own_values(db: Database, examples: list[dict[str, Any]], per_param: int
                         ) -> int:
    with db.session() as session:
        org_id = session.scalar(select(resource_table.c.org_id).limit(1))
    assert org_id
    principal = Principal("conformance", "conformance", org_id, frozenset({Role.clinician}),
                          "conformance")
    misses = []
    searches = _searches(examples, per_param)
    with db.session() as session:
        for rtype, rid, query in searches:
            req = parse_search(rtype, [("_id", rid), *query, ("_total", "none")], strict=True)
            found = run_search(session, principal, req)
            if [f.id for f in found.matches] != [rid]:
                misses.append((rtype, rid, query))
    assert not misses, misses[:20]
    return len(searches)


def test_care_examples_load_read_back_and_are_found(fhir: Fhir, db: Database,
                                                    care_examples: list[dict[str, Any]]
                                                    ) -> None:
    read_only = _refused_as_read_only(fhir, care_examples)
    valid, invalid = _load_and_read_back(fhir, care_examples)
    assert [(ex["resourceType"], ex["id"]) for ex in invalid] == [("Questionnaire", "qs1")]
    assert _found_by_own_values(db, valid, 1) > 500
    consents, unenforceable = _consents_enforced(fhir, care_examples)
    assert consents, "the package's enforceable Consents are stored"
    assert len(valid) + len(consents) + len(unenforceable) == 704 - len(read_only)


@pytest.fixture
def package_store(tmp_path: Path) -> Iterator[tuple[Fhir, Database]]:
    """Its own database (SQLite unless CAREPLANE_FHIR_CONFORMANCE_DB names another)."""
    url = os.environ.get("CAREPLANE_FHIR_CONFORMANCE_DB", f"sqlite:///{tmp_path}/r4.db")
    db = Database(url)
    migrate(db)
    settings = Settings(env="test", data_dir=tmp_path / "data", database_url=url,
                        job_workers=0, log_json=False)
    try:
        with TestClient(create_app(settings)) as client:
            yield Fhir(client, Accounts(db).make("loader", Role.clinician).headers), db
    finally:
        db.dispose()


@pytest.mark.slow
def test_whole_package_loads_and_reads_back(package_examples: list[dict[str, Any]],
                                            package_store: tuple[Fhir, Database]) -> None:
    fhir, db = package_store
    assert len(package_examples) == 5306
    read_only = _refused_as_read_only(fhir, package_examples)
    valid, invalid = _load_and_read_back(fhir, package_examples)
    assert len(invalid) == PACKAGE_INVALID
    assert _found_by_own_values(db, valid, 1) > 1000
    consents, unenforceable = _consents_enforced(fhir, package_examples)
    assert len(valid) + len(consents) + len(unenforceable) \
        == 5306 - 1 - PACKAGE_INVALID - len(read_only)  # one id appears twice
