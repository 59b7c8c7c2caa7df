"""``careplane audit verify``: zero exit on an intact chain, non-zero naming the bad record."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from careplane.cli import app
from careplane.platform.db import Database
from careplane.security import Principal, Role
from careplane.security.audit import record
from careplane.security.policy import Target


@pytest.fixture
def cli_env(db_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", db_url)
    monkeypatch.setenv("CAREPLANE_ENV", "test")
    monkeypatch.setenv("CAREPLANE_DATA_DIR", str(tmp_path))


def _fill(db: Database) -> list[int]:
    who = Principal("u1", "nurse", "org1", frozenset({Role.clinician}), "t1")
    with db.session() as session:
        return [record(session, who, "read", Target("records:Patient", "org1", id=str(i))).id
                for i in range(4)]


def test_audit_verify_passes_on_an_intact_chain(db: Database, cli_env: None) -> None:
    _fill(db)
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    head = out.pop("head")
    assert out == {"ok": True, "checked": 4, "first_bad_id": None, "problem": ""}
    assert head.split(":")[0] == str(max(_ids(db)))
    again = CliRunner().invoke(app, ["audit", "verify", "--expect-head", head])
    assert again.exit_code == 0, again.output


def _ids(db: Database) -> list[int]:
    with db.engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT id FROM audit_record"))]


def test_audit_verify_notices_records_cut_off_the_end(db: Database, cli_env: None) -> None:
    _fill(db)
    head = json.loads(CliRunner().invoke(app, ["audit", "verify"]).stdout)["head"]
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_record WHERE id = :i"),
                     {"i": int(head.split(":")[0])})
    # The shortened chain is consistent in itself ...
    assert CliRunner().invoke(app, ["audit", "verify"]).exit_code == 0
    # ... but not with the head noted before.
    result = CliRunner().invoke(app, ["audit", "verify", "--expect-head", head])
    assert result.exit_code == 1
    assert "cut off the end" in json.loads(result.stdout)["problem"]
    bad = CliRunner().invoke(app, ["audit", "verify", "--expect-head", "nonsense"])
    assert bad.exit_code == 2


def test_audit_verify_fails_on_tampering(db: Database, cli_env: None) -> None:
    ids = _fill(db)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET actor_name = 'x' WHERE id = :i"),
                     {"i": ids[1]})
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["first_bad_id"] == ids[1]
    assert f"broken at record {ids[1]}" in result.stderr


def test_client_add_prints_credentials_that_work(db: Database, cli_env: None,
                                                 settings: object) -> None:
    import base64

    from fastapi.testclient import TestClient

    from careplane.app import create_app
    from careplane.security.identity import create_org

    with db.session() as session:
        create_org(session, "org-a", "Org A")
    result = CliRunner().invoke(app, ["client", "add", "lab-sync", "--org", "org-a",
                                      "--scope", "system/*.rs"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["auth_method"] == "client_secret_basic"
    assert made["grant_types"] == ["client_credentials"]
    raw = base64.b64encode(f"{made['client_id']}:{made['client_secret']}".encode()).decode()
    application = create_app(settings)  # type: ignore[arg-type]
    try:
        with TestClient(application) as http:
            response = http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                 headers={"Authorization": f"Basic {raw}"})
    finally:
        application.state.platform.db.dispose()
    assert response.status_code == 200, response.text


def test_client_add_refuses_bad_input(db: Database, cli_env: None) -> None:
    from careplane.security.identity import create_org

    with db.session() as session:
        create_org(session, "org-a", "Org A")
    for args in (["--scope", "system/*.rs", "--org", "nowhere"],
                 ["--scope", "not a scope", "--org", "org-a"],
                 ["--scope", "user/*.rs", "--org", "org-a", "--public"],
                 ["--scope", "user/*.rs", "--org", "org-a", "--redirect-uri",
                  "http://evil.example/cb"]):
        result = CliRunner().invoke(app, ["client", "add", "x", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "careplane: error:" in result.stderr


def test_keys_rotate_signing(db: Database, cli_env: None) -> None:
    first = CliRunner().invoke(app, ["keys", "rotate-signing"])
    second = CliRunner().invoke(app, ["keys", "rotate-signing"])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["signing_key"] != b["signing_key"]
    assert set(b["published"]) == {a["signing_key"], b["signing_key"]}


def test_keys_rotate_and_rewrap_blobs(db: Database, cli_env: None, tmp_path: object) -> None:
    from pathlib import Path

    from careplane.platform.blobs import LocalBlobStore
    from careplane.security.encryption import blob_store_for
    from careplane.settings import load_settings

    settings = load_settings()
    legacy = LocalBlobStore(settings.blob_dir).put_bytes(b"PLAINTEXT-FROM-BEFORE" * 10)
    store = blob_store_for(settings)
    sealed = store.put_bytes(b"sealed under the first key" * 10)
    first_key = store.key_id(sealed.sha256)
    rotated = json.loads(CliRunner().invoke(app, ["keys", "rotate-blob"]).stdout)
    assert rotated["blob_key"] != first_key and len(rotated["keys"]) == 2
    result = CliRunner().invoke(app, ["keys", "rewrap-blobs", "--retire-old"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"blobs": 2, "rewrapped": 2,
                                         "retired_keys": [first_key]}
    assert b"PLAINTEXT" not in Path(store.inner.path(legacy.sha256)).read_bytes()
    fresh = blob_store_for(settings)
    assert b"".join(fresh.iter_bytes(legacy.sha256)) == b"PLAINTEXT-FROM-BEFORE" * 10
    assert b"".join(fresh.iter_bytes(sealed.sha256)) == b"sealed under the first key" * 10
