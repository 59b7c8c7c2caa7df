"""The command line as an operator uses it: real processes, real exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port


def careplane(*args: str, env: dict[str, str] | None = None, timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAREPLANE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "careplane", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_org_and_user_add_print_json(db_url: str, tmp_path: Path) -> None:
    env = {"CAREPLANE_DATABASE_URL": db_url, "CAREPLANE_ENV": "test"}
    org = careplane("org", "add", "st-marys", "--name", "St Mary's", "--data-dir",
                    str(tmp_path), env=env)
    assert org.returncode == 0, org.stderr
    assert json.loads(org.stdout)["slug"] == "st-marys"
    user = careplane("user", "add", "mina", "--org", "st-marys", "--role", "clinician",
                     "--role", "admin", "--data-dir", str(tmp_path), env=env)
    assert user.returncode == 0, user.stderr
    created = json.loads(user.stdout)
    assert created["roles"] == ["admin", "clinician"]
    assert len(created["password"]) >= 12
    token = careplane("token", "add", "mina", "--data-dir", str(tmp_path), env=env)
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stdout)["token_type"] == "Bearer"
    again = careplane("org", "add", "st-marys", "--data-dir", str(tmp_path), env=env)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    nobody = careplane("user", "add", "x", "--org", "nowhere", "--role", "clinician",
                       "--data-dir", str(tmp_path), env=env)
    assert nobody.returncode == 2 and "no organisation 'nowhere'" in nobody.stderr


def test_unknown_option_is_refused() -> None:
    result = careplane("serve", "--no-such-option")
    assert result.returncode != 0
    assert "No such option" in result.stderr


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    result = careplane("user", "add", "x", "--org", "a", "--role", "wizard", "--data-dir",
                       str(tmp_path), env={"CAREPLANE_ENV": "test"})
    assert result.returncode != 0
    assert "wizard" in result.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    result = careplane("migrate", "--data-dir", str(tmp_path), env={
        "CAREPLANE_DATABASE_URL": f"postgresql://careplane:secret@127.0.0.1:{port}/nope"})
    assert result.returncode == 2
    assert "cannot reach the database" in result.stderr
    assert "secret" not in result.stderr  # the password is never printed
    assert "Traceback" not in result.stderr


def test_corrupt_config_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("port = = 1")
    result = careplane("migrate", env={"CAREPLANE_CONFIG": str(cfg)})
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_default_secrets_outside_development(tmp_path: Path) -> None:
    result = careplane("serve", "--data-dir", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 2
    assert "CAREPLANE_SECRET_KEY" in result.stderr
    assert not (tmp_path / "careplane.db").exists()


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    first = careplane("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["migrated"] is True
    second = careplane("migrate", "--data-dir", str(tmp_path))
    assert json.loads(second.stdout)["migrated"] is False


@pytest.mark.slow
def test_demo_seeds_logins_and_is_repeatable(tmp_path: Path) -> None:
    first = careplane("demo", "--no-serve", "--data-dir", str(tmp_path), timeout=300)
    assert first.returncode == 0, first.stderr
    assert "nurse" in first.stderr and "nurse-demo-pass" in first.stderr
    second = careplane("demo", "--no-serve", "--data-dir", str(tmp_path), timeout=300)
    assert second.returncode == 0, second.stderr


def test_first_start_creates_the_administrator(tmp_path: Path) -> None:
    from careplane.cli import bootstrap_admin
    from careplane.platform.db import Database, migrate
    from careplane.security.identity import authenticate

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        migrate(db)
        with db.session() as session:
            assert bootstrap_admin(session, "a-strong-admin-password")
        with db.session() as session:
            assert not bootstrap_admin(session, "another-password")
            admin = authenticate(session, "admin", "a-strong-admin-password")
            assert admin is not None
            assert [m.role for m in admin.memberships] == ["admin"]
    finally:
        db.dispose()


def test_workers_get_the_data_directory_of_the_command(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.cli import export_to_workers
    from careplane.settings import Settings, load_settings

    # Set through monkeypatch first, so that whatever export_to_workers writes is undone.
    for name in ("CAREPLANE_DATA_DIR", "CAREPLANE_DATABASE_URL", "CAREPLANE_ENV"):
        monkeypatch.setenv(name, "")
    export_to_workers(Settings(env="development", data_dir=tmp_path / "d",
                               database_url="postgresql://db/care"))
    seen = load_settings()  # what a task in a worker process reads
    assert seen.data_dir == tmp_path / "d"
    assert seen.db_url == "postgresql+psycopg://db/care"
    assert seen.development
