"""Imaging configuration: the DIMSE identity, the duplicate policy, the DICOM peers.

Read from ``CAREPLANE_DICOM_*`` environment variables so the imaging domain owns its own
knobs without widening the platform's settings class. Complex values are JSON, e.g.
``CAREPLANE_DICOM_REMOTE_AES='{"CT01": {"org": "demo-hospital", "host": "10.0.0.5",
"port": 104}}'``: a modality or PACS may only associate if its calling AE title is listed
(here or in the ``dicom_remote_ae`` table), and what it sends lands in that organisation.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DuplicatePolicy", "ImagingSettings", "RemoteAE", "imaging_settings"]


class DuplicatePolicy(StrEnum):
    """What to do when an instance arrives whose SOP Instance UID is already stored."""

    reject = "reject"  # refuse the newcomer (STOW failure 0x0111 / C-STORE 0x0111)
    keep_first = "keep-first"  # report success, keep the copy already stored
    overwrite = "overwrite"  # replace the stored copy with the newcomer


class RemoteAE(BaseModel):
    org: str = Field(description="slug or id of the organisation this peer sends for")
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class ImagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAREPLANE_DICOM_", extra="ignore")

    ae_title: str = "CAREPLANE"
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.keep_first
    remote_aes: dict[str, RemoteAE] = Field(default_factory=dict)
    # browser origins (e.g. an OHIF viewer served elsewhere) allowed to call /dicomweb
    cors_origins: list[str] = Field(default_factory=list)
    # the OHIF viewer's build, installed by scripts/install-ohif and served at /ohif/
    ohif_dir: Path = Field(default_factory=lambda: Path.cwd() / "data" / "vendor" / "ohif")
    # keep a FHIR ImagingStudy (and Patient) in the records for every study
    fhir_link: bool = True
    # largest single instance accepted by STOW-RS or C-STORE
    max_instance_bytes: int = Field(default=4 * 1024**3, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _valid_ae(cls, value: str) -> str:
        value = value.strip()
        if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without a backslash")
        return value


@lru_cache(maxsize=1)
def imaging_settings() -> ImagingSettings:
    """The process's imaging settings, read once (``imaging_settings.cache_clear()`` rereads)."""
    return ImagingSettings()
