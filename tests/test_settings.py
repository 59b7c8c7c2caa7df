from pathlib import Path

import pytest

from careplane.settings import (
    DEFAULT_ADMIN_PASSWORD,
    DEFAULT_SECRET_KEY,
    Settings,
    SettingsError,
    load_settings,
)


def test_production_refuses_default_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAREPLANE_ENV", raising=False)
    settings = Settings()
    with pytest.raises(SettingsError, match=r"SECRET_KEY.*ADMIN_PASSWORD"):
        settings.check_safe()


def test_production_accepts_strong_secrets() -> None:
    Settings(env="production", secret_key="x" * 40, admin_password="a-long-password").check_safe()


def test_production_refuses_default_admin_password_alone() -> None:
    settings = Settings(env="production", secret_key="k" * 40,
                        admin_password=DEFAULT_ADMIN_PASSWORD)
    with pytest.raises(SettingsError, match="ADMIN_PASSWORD"):
        settings.check_safe()


def test_development_allows_defaults() -> None:
    settings = Settings(env="development")
    assert settings.secret_key == DEFAULT_SECRET_KEY
    settings.check_safe()


def test_embedded_default_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path / 'careplane.db'}"
    assert settings.blob_dir == tmp_path / "blobs"


def test_postgres_url_uses_psycopg3() -> None:
    settings = Settings(database_url="postgresql://u:p@db:5432/care")
    assert settings.db_url == "postgresql+psycopg://u:p@db:5432/care"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CAREPLANE_PORT", "9001")
    settings = load_settings()
    assert settings.data_dir == tmp_path
    assert settings.port == 9001


def test_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "careplane.toml"
    cfg.write_text('[careplane]\nport = 8123\njob_workers = 4\n')
    monkeypatch.setenv("CAREPLANE_CONFIG", str(cfg))
    monkeypatch.setenv("CAREPLANE_JOB_WORKERS", "1")  # the environment wins over the file
    settings = load_settings()
    assert settings.port == 8123
    assert settings.job_workers == 1


def test_corrupt_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    cfg = tmp_path / "careplane.toml"
    cfg.write_text("[careplane\nport = ")
    monkeypatch.setenv("CAREPLANE_CONFIG", str(cfg))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings()


def test_invalid_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREPLANE_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="port"):
        load_settings()
