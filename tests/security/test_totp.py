"""One-time passwords: RFC 6238 vectors, enrolment, sign-in with a code, replay refused."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.totp import STEP, code_at
from tests.conftest import Accounts

RFC_SECRET = b"12345678901234567890"


@pytest.mark.parametrize(("unix_time", "code"), [
    (59, "287082"), (1111111109, "081804"), (1111111111, "050471"), (1234567890, "005924"),
    (2000000000, "279037"), (20000000000, "353130")])
def test_rfc6238_vectors(unix_time: int, code: str) -> None:
    assert code_at(RFC_SECRET, unix_time // STEP) == code


def _secret(uri: str) -> bytes:
    value = parse_qs(urlsplit(uri).query)["secret"][0]
    return base64.b32decode(value + "=" * (-len(value) % 8))


def _login(client: TestClient, username: str, password: str, totp: str | None = None) -> int:
    body = {"username": username, "password": password}
    if totp is not None:
        body["totp"] = totp
    return client.post("/api/auth/token", json=body).status_code


def test_enrol_then_sign_in_needs_a_fresh_code(client: TestClient, accounts: Accounts,
                                               db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    setup = client.post("/api/auth/totp", headers=doctor.headers)
    assert setup.status_code == 200
    uri = setup.json()["otpauth_uri"]
    assert uri.startswith("otpauth://totp/careplane%3Adoctor?")
    secret = _secret(uri)
    # Not on until confirmed: a password alone still works.
    assert _login(client, "doctor", doctor.password) == 200
    now_step = int(time.time() // STEP)
    valid_now = {code_at(secret, s) for s in range(now_step - 1, now_step + 3)}
    wrong_code = next(c for c in ("000000", "111111", "222222") if c not in valid_now)
    assert client.post("/api/auth/totp/confirm", json={"code": wrong_code},
                       headers=doctor.headers).status_code == 400
    assert client.post("/api/auth/totp/confirm", json={"code": code_at(secret, now_step)},
                       headers=doctor.headers).status_code == 204
    missing = client.post("/api/auth/token", json={"username": "doctor",
                                                   "password": doctor.password})
    assert missing.status_code == 401 and "one-time code" in missing.json()["error"]["message"]
    # The confirming code cannot be used again; the next step's code works once.
    assert _login(client, "doctor", doctor.password, code_at(secret, now_step)) == 401
    assert _login(client, "doctor", doctor.password, code_at(secret, now_step + 1)) == 200
    assert _login(client, "doctor", doctor.password, code_at(secret, now_step + 1)) == 401
    assert _login(client, "doctor", "wrong-password", code_at(secret, now_step)) == 401
    assert client.post("/api/auth/totp", headers=doctor.headers).status_code == 409
    assert client.post("/api/auth/token", json={"username": "doctor", "password": "x",
                                                "totp": "12ab56"}).status_code == 422


def test_sealed_secret_and_disable(client: TestClient, accounts: Accounts,
                                   db: Database) -> None:
    from careplane.security.totp import TotpEnrolment

    nurse = accounts.make("nurse", Role.clinician)
    secret = _secret(client.post("/api/auth/totp", headers=nurse.headers).json()["otpauth_uri"])
    with db.session() as session:
        row = session.get(TotpEnrolment, nurse.user_id)
        assert row is not None
        assert base64.b32encode(secret).decode().rstrip("=") not in row.secret_sealed
    step = int(time.time() // STEP)
    assert client.post("/api/auth/totp/confirm", json={"code": code_at(secret, step)},
                       headers=nurse.headers).status_code == 204
    assert client.post("/api/auth/totp/disable", json={"code": code_at(secret, step)},
                       headers=nurse.headers).status_code == 400  # already used
    assert client.post("/api/auth/totp/disable", json={"code": code_at(secret, step + 1)},
                       headers=nurse.headers).status_code == 204
    assert _login(client, "nurse", nurse.password) == 200
