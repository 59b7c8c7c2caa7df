"""The per-request hot path: a FHIR read is authenticated, decided and audited once, without
a transaction of its own (no write lock on SQLite, no BEGIN/COMMIT on PostgreSQL), and what it
saves never costs a guarantee: refusals are still recorded, bad tokens still refused, the
chain still verifies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, text

from careplane.app import create_app
from careplane.platform.db import Database
from careplane.platform.db import _engine as engine_module
from careplane.platform.events import publish
from careplane.security import Role
from careplane.security.audit import AuditRecord, flush_all, verify
from careplane.security.consent import Provision, record_consent
from careplane.settings import Settings
from tests.conftest import Accounts

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def _patient(client: TestClient, headers: dict[str, str]) -> str:
    created = client.post("/fhir/Patient", headers={**headers, **FHIR}, content=orjson.dumps(
        {"resourceType": "Patient", "name": [{"family": "Hot"}]}))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@contextmanager
def _statements(db: Database) -> Iterator[list[tuple[int, str, str]]]:
    """(thread, first word, statement) of everything executed, transactions begun as
    ``TRANSACTION`` (autocommit connections begin none). On PostgreSQL statements are seen
    at the driver's cursor, where those a read sends past SQLAlchemy are seen too."""
    seen: list[tuple[int, str, str]] = []

    def remember(statement: Any) -> None:
        text = statement if isinstance(statement, str) else bytes(statement).decode()
        seen.append((threading.get_ident(), text.split(None, 1)[0].upper(), text))

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        remember(statement)

    def begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if not options.get("careplane_autocommit") and \
                options.get("isolation_level") != "AUTOCOMMIT":
            seen.append((threading.get_ident(), "TRANSACTION", ""))

    execute = psycopg.Cursor.execute

    def driver_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        remember(query)
        return execute(cursor, query, *args, **kwargs)

    event.listen(db.engine, "begin", begin)
    if db.is_postgresql:
        psycopg.Cursor.execute = driver_execute  # type: ignore[method-assign]
    else:
        event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "begin", begin)
        if db.is_postgresql:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        else:
            event.remove(db.engine, "before_cursor_execute", note)


def _of_the_request(seen: list[tuple[int, str, str]]) -> list[str]:
    """What the request's own thread executed (the handler reads the resource; the event
    hub and the audit writer work on threads of their own)."""
    threads = {t for t, _, statement in seen if "FROM fhir_resource" in statement}
    assert len(threads) == 1, seen
    return [word for t, word, _ in seen if t in threads]


def test_a_read_opens_no_transaction_and_is_audited_once(client: TestClient,
                                                         accounts: Accounts) -> None:
    nurse = accounts.make("nurse")
    pid = _patient(client, nurse.headers)
    db: Database = client.app.state.platform.db  # type: ignore[attr-defined]
    flush_all()
    with db.session() as session:
        before = session.scalar(select(AuditRecord.id).order_by(AuditRecord.id.desc()).limit(1))
    with _statements(db) as seen:
        read = client.get(f"/fhir/Patient/{pid}", headers={**nurse.headers, **FHIR})
        assert read.status_code == 200, read.text
        assert read.headers["ETag"] == 'W/"1"'
        ours = _of_the_request(list(seen))
        statements = [s for _, _, s in seen if "FROM fhir_resource" in s]
    # token, resource and consents: one statement, no BEGIN, no write
    assert "TRANSACTION" not in ours and "BEGIN" not in ours, ours
    assert ours == ["SELECT"], ours
    assert all(table in statements[0] for table in ("auth_token", "consent_provision")), \
        statements
    flush_all()
    with db.session() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.id > (before or 0))).all()
        assert [(r.action, r.target_id, r.outcome) for r in rows] == [
            ("read", pid, "success")]
        assert verify(session).ok


def test_a_read_does_not_wait_for_a_writer(client: TestClient, accounts: Accounts,
                                           db: Database) -> None:
    """SQLite has one writer at a time: a read must not queue behind a long write."""
    nurse = accounts.make("nurse")
    pid = _patient(client, nurse.headers)
    held, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with db.session() as session:  # BEGIN IMMEDIATE on SQLite: the write lock
            session.execute(text("UPDATE auth_token SET last_used_at = last_used_at"))
            held.set()
            release.wait(20)

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        read = client.get(f"/fhir/Patient/{pid}", headers={**nurse.headers, **FHIR})
        took = time.monotonic() - started
    finally:
        release.set()
        writer.join()
    assert read.status_code == 200, read.text
    assert took < 5, took


def test_a_refused_read_is_recorded_durably(client: TestClient, accounts: Accounts) -> None:
    owner = accounts.make("owner")
    stranger = accounts.make("stranger", org="org-b")
    pid = _patient(client, owner.headers)
    refused = client.get(f"/fhir/Patient/{pid}", headers={**stranger.headers, **FHIR})
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    db: Database = client.app.state.platform.db  # type: ignore[attr-defined]
    with db.session() as session:  # no flush: a refusal is never queued
        denied = session.scalars(select(AuditRecord).where(
            AuditRecord.outcome == "denied", AuditRecord.target_id == pid)).all()
        assert [r.actor_name for r in denied] == ["stranger"]
        assert verify(session).ok


@pytest.mark.parametrize(("header", "challenge"), [
    ("Bearer not-a-token", "invalid_token"),
    ("Basic dXNlcjpwYXNz", "invalid_request"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "invalid_token"),
])
def test_a_read_with_bad_credentials_is_refused_before_any_data(
        client: TestClient, accounts: Accounts, header: str, challenge: str) -> None:
    nurse = accounts.make("nurse")
    pid = _patient(client, nurse.headers)
    r = client.get(f"/fhir/Patient/{pid}", headers={"Authorization": header, **FHIR})
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    assert f'error="{challenge}"' in r.headers["WWW-Authenticate"]
    assert "Hot" not in r.text
    anonymous = client.get(f"/fhir/Patient/{pid}/_history/1", headers=FHIR)
    assert anonymous.status_code == 401 and "Hot" not in anonymous.text


def test_a_revoked_token_is_refused_at_once(client: TestClient,
                                            accounts: Accounts) -> None:
    nurse = accounts.make("nurse")
    pid = _patient(client, nurse.headers)
    url = f"/fhir/Patient/{pid}"
    assert client.get(url, headers={**nurse.headers, **FHIR}).status_code == 200
    assert client.post("/api/auth/revoke", headers=nurse.headers).status_code in (200, 204)
    assert client.get(url, headers={**nurse.headers, **FHIR}).status_code == 401


def test_break_glass_past_a_consent_deny_on_a_read_is_flagged(
        client: TestClient, accounts: Accounts, db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    pid = _patient(client, doctor.headers)
    with db.session() as session:
        record_consent(session, org_id=doctor.org_id, patient_id=pid,
                       provision=Provision("deny"))
    url = f"/fhir/Patient/{pid}"
    assert client.get(url, headers={**doctor.headers, **FHIR}).status_code == 403
    reason = "patient unconscious in the emergency department"
    r = client.get(url, headers={**doctor.headers, **FHIR, "X-Break-Glass-Reason": reason})
    assert r.status_code == 200, r.text
    flush_all()
    with db.session() as session:
        flagged = session.scalars(select(AuditRecord).where(
            AuditRecord.break_glass.is_(True))).all()
        assert [(r.target_id, r.detail.get("break_glass_reason")) for r in flagged] == [
            (pid, reason)]
    short = client.get(url, headers={**doctor.headers, **FHIR,
                                         "X-Break-Glass-Reason": "urgent"})
    assert short.status_code == 400 and short.json()["resourceType"] == "OperationOutcome"


def test_platform_session_wakes_the_hub_only_after_publishing(settings: Settings) -> None:
    app = create_app(settings)
    platform = app.state.platform
    pokes: list[int] = []
    platform.events.poke = lambda: pokes.append(1)  # type: ignore[method-assign]
    try:
        with platform.session() as session:
            session.execute(text("SELECT 1"))
        assert pokes == []
        with platform.session() as session:
            publish(session, "test.topic", {"x": 1})
        assert pokes == [1]
    finally:
        platform.db.dispose()


def test_an_idle_connection_is_checked_and_a_dead_one_replaced(
        postgres_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(postgres_db_url)
    try:
        with db.engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        pings: list[int] = []
        real_ping = db.engine.dialect.do_ping

        def counting_ping(dbapi_conn: Any) -> bool:
            pings.append(1)
            return bool(real_ping(dbapi_conn))

        monkeypatch.setattr(db.engine.dialect, "do_ping", counting_ping)
        with db.engine.connect() as conn:  # used a moment ago: no ping
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == first
        assert pings == []
        admin = Database(postgres_db_url)
        with admin.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first})
            conn.commit()
        admin.dispose()
        monkeypatch.setattr(engine_module, "_IDLE_PING_S", 0.0)  # as if idle for long
        with db.engine.connect() as conn:  # pinged, found dead, replaced: no error
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
        assert len(pings) >= 1
    finally:
        db.dispose()


def test_a_version_beyond_any_stored_is_not_found(client: TestClient,
                                                  accounts: Accounts) -> None:
    nurse = accounts.make("nurse")
    pid = _patient(client, nurse.headers)
    for vid in ("99999999999999999999", "2", "x"):
        r = client.get(f"/fhir/Patient/{pid}/_history/{vid}",
                           headers={**nurse.headers, **FHIR})
        assert r.status_code == 404, (vid, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}/_history/1",
                          headers={**nurse.headers, **FHIR}).json()["id"] == pid


def test_what_a_read_fetches_ahead_is_what_each_lookup_finds(client: TestClient,
                                                             accounts: Accounts) -> None:
    """The one statement of a read hands the token, resource and consent lookups the same
    answers they would find on their own: every role of a two-role account, every provision
    of a consent with an exception, nothing for an unknown token or a missing resource."""
    from careplane.records import store
    from careplane.security.consent import rules_for
    from careplane.security.identity import hash_token, load_token

    admin = accounts.make("ward-lead", Role.clinician, Role.admin)
    pid = _patient(client, admin.headers)
    db: Database = client.app.state.platform.db  # type: ignore[attr-defined]
    with db.session() as session:
        record_consent(session, org_id=admin.org_id, patient_id=pid, provision=Provision(
            "permit", exceptions=[Provision("deny", purposes=["HRESCH"]),
                                  Provision("deny", actor_roles=["researcher"])]))
    key = hash_token(admin.token)
    with db.read_session() as session:
        alone = (load_token(session, "hash", key), store.current_row(session, "Patient", pid),
                 rules_for(session, admin.org_id, pid))
    with db.read_session() as session:
        store.read_ahead(session, "Patient", pid, ("hash", key))
        statements: list[str] = []

        def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", note)
        try:
            ahead = (load_token(session, "hash", key),
                     store.current_row(session, "Patient", pid),
                     rules_for(session, admin.org_id, pid))
        finally:
            event.remove(db.engine, "before_cursor_execute", note)
    assert alone[0] is not None and alone[0].roles == {Role.clinician, Role.admin}
    assert ahead[0] == alone[0]
    assert tuple(ahead[1]) == tuple(alone[1])
    assert len(alone[2]) == 3 and sorted(ahead[2], key=str) == sorted(alone[2], key=str)
    assert statements == [], statements  # all three answered without a query
    with db.read_session() as session:
        store.read_ahead(session, "Patient", pid, ("hash", hash_token("not-a-token")))
        assert load_token(session, "hash", hash_token("not-a-token")) is None
        store.read_ahead(session, "Patient", "no-such-patient", ("hash", key))
        assert load_token(session, "hash", key) == alone[0]
        assert store.current_row(session, "Patient", "no-such-patient") is None


def test_a_read_on_a_lost_connection_fails_as_any_statement_does(db: Database) -> None:
    """On PostgreSQL a read's one statement goes to the driver's cursor; when the connection
    is gone, it fails the way every other statement does (SQLAlchemy's OperationalError,
    which the API answers with 503, and the pool replaces the connection), not with the
    driver's own error."""
    from sqlalchemy.exc import OperationalError

    from careplane.records import store

    if not db.is_postgresql:
        pytest.skip("SQLite reads go through SQLAlchemy only")
    with pytest.raises(OperationalError), db.read_session() as session:
        session.connection().connection.driver_connection.close()  # type: ignore[union-attr]
        store.read_ahead(session, "Patient", "anyone", ("hash", "no-such-token"))
    with db.read_session() as session:  # the pool hands out a working connection again
        assert store.current_row(session, "Patient", "anyone") is None
