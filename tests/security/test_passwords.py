"""The password policy (ASVS V2.1): length first, no composition rules, guessable ones refused."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from careplane.demo import USERS
from careplane.security import Role
from careplane.security.passwords import (
    MIN_PASSWORD_LENGTH,
    PasswordPolicyError,
    check_password_policy,
    password_problem,
)
from careplane.settings import Settings
from tests.conftest import Accounts


@pytest.mark.parametrize("password", [
    "correct horse battery", "twelve chars", "Ünïcödé-pässwörd", "密码是一个很长的句子吧吗",
    "a" * 3 + "bcd" * 3, "x" * 11 + "yzw", "pass phrase " * 10 + "ends"])
def test_acceptable(password: str) -> None:
    assert password_problem(password) is None
    check_password_policy(password)


@pytest.mark.parametrize("password,problem", [
    ("", "at least 12"), ("elevenchars", "this one has 11"), ("p" * 129, "at most 128"),
    ("aaaaaaaaaaaaaaa", "repeated"), ("abababababab", "repeated"),
    ("Password1234", "commonly used"), ("123456789012", "commonly used"),
    ("with\x00a-null-byte", "control"), ("tab\tinside-a-pass", "control"),
])
def test_refused(password: str, problem: str) -> None:
    with pytest.raises(PasswordPolicyError, match=problem):
        check_password_policy(password)


def test_username_is_not_a_password() -> None:
    assert password_problem("Frederick-Long", username="frederick-long") is not None
    assert password_problem("frederick-long-walk", username="frederick-long") is None


def test_demo_passwords_meet_the_policy() -> None:
    for user in USERS:
        assert len(user.password) >= MIN_PASSWORD_LENGTH
        assert password_problem(user.password, username=user.username) is None


def test_change_own_password(client: TestClient, accounts: Accounts) -> None:
    nurse = accounts.make("gina", Role.clinician)
    change = client.post("/api/auth/password", headers=nurse.headers,
                         json={"current_password": nurse.password, "new_password": "short"})
    assert change.status_code == 400
    assert "at least 12 characters" in change.json()["error"]["message"]
    wrong = client.post("/api/auth/password", headers=nurse.headers,
                        json={"current_password": "not-my-password", "new_password":
                              "a much longer passphrase"})
    assert wrong.status_code == 403
    same = client.post("/api/auth/password", headers=nurse.headers,
                       json={"current_password": nurse.password,
                             "new_password": nurse.password})
    assert same.status_code == 400
    ok = client.post("/api/auth/password", headers=nurse.headers,
                     json={"current_password": nurse.password,
                           "new_password": "a much longer passphrase"})
    assert ok.status_code == 204, ok.text
    old = client.post("/api/auth/token", json={"username": "gina", "password": nurse.password})
    assert old.status_code == 401
    new = client.post("/api/auth/token", json={"username": "gina",
                                               "password": "a much longer passphrase"})
    assert new.status_code == 200
    assert client.post("/api/auth/password", json={
        "current_password": "x", "new_password": "y" * 12}).status_code == 401


def test_cli_refuses_a_short_password(settings: Settings, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    from careplane.cli import app

    monkeypatch.setenv("CAREPLANE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("CAREPLANE_ENV", "test")
    runner = CliRunner()
    made = runner.invoke(app, ["org", "add", "org-p"])
    assert made.exit_code == 0, made.output
    short = runner.invoke(app, ["user", "add", "pat", "--org", "org-p", "--role", "clinician",
                                "--password", "too-short"])
    assert short.exit_code == 2
    assert "at least 12 characters" in short.output and "Traceback" not in short.output
    fine = runner.invoke(app, ["user", "add", "pat", "--org", "org-p", "--role", "clinician",
                               "--password", "a-long-enough-password"])
    assert fine.exit_code == 0, fine.output
    assert json.loads(fine.stdout)["username"] == "pat"


def test_changing_the_password_signs_out_every_other_token(client: TestClient,
                                                           accounts: Accounts) -> None:
    nurse = accounts.make("hana", Role.clinician)
    other = client.post("/api/auth/token", json={"username": "hana",
                                                 "password": nurse.password})
    assert other.status_code == 200
    elsewhere = {"Authorization": f"Bearer {other.json()['access_token']}"}
    assert client.get("/api/auth/me", headers=elsewhere).status_code == 200
    ok = client.post("/api/auth/password", headers=nurse.headers,
                     json={"current_password": nurse.password,
                           "new_password": "a much longer passphrase"})
    assert ok.status_code == 204, ok.text
    assert client.get("/api/auth/me", headers=elsewhere).status_code == 401
    assert client.get("/api/auth/me", headers=nurse.headers).status_code == 200


def test_wrong_current_passwords_lock_the_account(client: TestClient,
                                                  accounts: Accounts) -> None:
    from careplane.security.identity import MAX_FAILED_LOGINS

    nurse = accounts.make("ines", Role.clinician)
    for _ in range(MAX_FAILED_LOGINS):
        wrong = client.post("/api/auth/password", headers=nurse.headers,
                            json={"current_password": "a guess at it",
                                  "new_password": "a much longer passphrase"})
        assert wrong.status_code == 403
    locked = client.post("/api/auth/password", headers=nurse.headers,
                         json={"current_password": nurse.password,
                               "new_password": "a much longer passphrase"})
    assert locked.status_code == 403 and "locked" in locked.json()["error"]["message"]
    assert client.post("/api/auth/token", json={
        "username": "ines", "password": nurse.password}).status_code == 401
