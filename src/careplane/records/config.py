"""Limits of the FHIR API, from ``CAREPLANE_FHIR_*`` environment variables.

They bound what one request may ask of the server: a bundle larger than ``max_bundle_entries``
or a body larger than ``max_body_bytes`` is refused with 413 before anything is parsed or
written.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FhirConfig"]


class FhirConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAREPLANE_FHIR_", extra="ignore")

    max_bundle_entries: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: PostgreSQL cancels a search statement running longer than this (503 too-costly).
    search_timeout_ms: int = Field(default=30_000, ge=1)
