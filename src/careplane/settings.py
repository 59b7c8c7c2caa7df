"""One settings object for the whole platform.

Values come from ``CAREPLANE_*`` environment variables, then an optional TOML config file
(``CAREPLANE_CONFIG``), then the defaults below. The defaults make a development machine
work with no configuration at all; outside development the same defaults would be unsafe,
so :meth:`Settings.check_safe` refuses them and says which one to set.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["DEFAULT_ADMIN_PASSWORD", "DEFAULT_SECRET_KEY", "Environment", "Settings",
           "SettingsError", "load_settings"]

DEFAULT_SECRET_KEY = "careplane-development-secret-key-change-me"  # noqa: S105
DEFAULT_ADMIN_PASSWORD = "careplane-admin"  # noqa: S105 - the known-unsafe default we refuse


class SettingsError(RuntimeError):
    """The configuration cannot be used; the message says what to change."""


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the file named by ``CAREPLANE_CONFIG``; a broken file is a clear error."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        path = os.environ.get("CAREPLANE_CONFIG")
        if not path:
            return
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
        section = raw.get("careplane", raw)
        if not isinstance(section, dict):
            raise SettingsError(f"config file {path}: [careplane] must be a table")
        self._data = section

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAREPLANE_", extra="ignore")

    env: Environment = Environment.production
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "data")
    database_url: str | None = None
    secret_key: str = DEFAULT_SECRET_KEY
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    job_workers: int = Field(default=2, ge=0, le=64)
    # Processes answering HTTP: Python runs one request's work on one core at a time, so a
    # busy server (bundle ingest from several clients) needs one process per core to use them.
    http_workers: int = Field(default=1, ge=1, le=64)
    job_heartbeat_seconds: float = Field(default=5.0, gt=0)
    job_stale_after_seconds: float = Field(default=30.0, gt=0)
    event_poll_seconds: float = Field(default=0.25, gt=0)
    event_retention_hours: float = Field(default=72.0, gt=0)
    # Reads' audit records are group-committed at most this long after the read (see
    # careplane.security.audit); changes' records always commit with the change.
    audit_delay_ms: float = Field(default=50.0, ge=0, le=5000)
    session_hours: float = Field(default=12.0, gt=0)
    token_days: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = True
    max_upload_bytes: int = Field(default=64 * 1024**3, gt=0)
    # Where genomics runs spread their chunks and regions: "local" (a process pool on the
    # worker's machine) or "ray" (Ray tasks; the cluster extra). ray_address: the cluster to
    # join ("auto", "ray://host:10001"); unset, each run starts a private local Ray instance.
    genomics_executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    # Browser origins (SMART apps, viewers served elsewhere) that may call /fhir, /dicomweb
    # and the OAuth2 token endpoints with a bearer token: exact origins such as
    # "https://app.example.org" (JSON list in CAREPLANE_CORS_ORIGINS). Cookies are never
    # shared across origins, so no origin is ever allowed credentials.
    cors_origins: list[str] = Field(default_factory=list)
    # An external OpenID Connect provider (Keycloak, Entra ID...) whose access tokens are
    # accepted beside careplane's own: its issuer, the URL of its JWKS, the audience its tokens
    # must name, the organisation (slug) its users belong to, the claim that lists their roles
    # (a dotted path such as "realm_access.roles") and how those map to careplane roles.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    oidc_org: str | None = None
    oidc_username_claim: str = "preferred_username"
    oidc_roles_claim: str = "roles"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls), file_secret_settings)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _check_origins_and_oidc(self) -> Settings:
        for origin in self.cors_origins:
            scheme, sep, rest = origin.partition("://")
            if origin == "*" or not sep or scheme not in ("http", "https") or not rest \
                    or "/" in rest or origin != origin.strip():
                raise ValueError(f"cors_origins: {origin!r} is not an origin such as "
                                 "https://app.example.org (no path, no wildcard)")
        oidc = (self.oidc_issuer, self.oidc_jwks_url, self.oidc_audience, self.oidc_org)
        if any(oidc) and not all(oidc):
            raise ValueError("an external OIDC provider needs oidc_issuer, oidc_jwks_url, "
                             "oidc_audience and oidc_org together")
        return self

    @property
    def development(self) -> bool:
        return self.env is not Environment.production

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL; the embedded default is a SQLite file in the data directory."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{self.data_dir / 'careplane.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def check_safe(self) -> None:
        """Refuse defaults that would be unsafe on a real deployment."""
        if self.development:
            return
        problems = []
        if self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32:
            problems.append("CAREPLANE_SECRET_KEY is the default or shorter than 32 characters")
        if self.admin_password == DEFAULT_ADMIN_PASSWORD or len(self.admin_password) < 12:
            problems.append(
                "CAREPLANE_ADMIN_PASSWORD is the default or shorter than 12 characters")
        if problems:
            raise SettingsError(
                "refusing to start outside development mode: " + "; ".join(problems)
                + ". Set them, or set CAREPLANE_ENV=development on a development machine.")


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation failures into one readable :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors())
        raise SettingsError(f"invalid configuration: {details}") from exc
