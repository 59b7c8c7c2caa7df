"""The DICOM peers allowed to associate, each for one organisation.

Listed in the ``dicom_remote_ae`` table (managed here) or configured with
``CAREPLANE_DICOM_REMOTE_AES``; the table wins when both name the same AE title. A peer with a
host and port can also be the destination of a C-MOVE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.imaging.config import RemoteAE
from careplane.imaging.models import DicomRemoteAE
from careplane.security.models import Organisation

__all__ = ["Peer", "add_remote_ae", "peers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    ae_title: str
    org_id: str
    host: str | None = None
    port: int | None = None


def _org_id(session: Session, slug_or_id: str) -> str | None:
    org = session.scalars(select(Organisation).where(
        (Organisation.slug == slug_or_id) | (Organisation.id == slug_or_id))).first()
    return org.id if org else None


def peers(session: Session, configured: dict[str, RemoteAE] | None = None) -> dict[str, Peer]:
    """The allowed DICOM peers by AE title: configured ones, then the table (which wins)."""
    found: dict[str, Peer] = {}
    for title, remote in (configured or {}).items():
        org_id = _org_id(session, remote.org)
        if org_id is None:
            log.warning("DICOM peer %s names an unknown organisation %r", title, remote.org)
            continue
        found[title.strip()] = Peer(title.strip(), org_id, remote.host, remote.port)
    for row in session.scalars(select(DicomRemoteAE)):
        found[row.ae_title.strip()] = Peer(row.ae_title.strip(), row.org_id, row.host, row.port)
    return found


def add_remote_ae(session: Session, org_id: str, ae_title: str, *, host: str | None = None,
                  port: int | None = None, description: str = "") -> DicomRemoteAE:
    """Allow a DICOM peer to associate, for one organisation (or update where it points)."""
    title = ae_title.strip()
    if not 0 < len(title) <= 16 or "\\" in title:
        raise ValueError("an AE title is 1-16 characters without a backslash")
    row = session.scalars(select(DicomRemoteAE).where(DicomRemoteAE.ae_title == title)).first()
    if row is None:
        row = DicomRemoteAE(ae_title=title, org_id=org_id)
        session.add(row)
    row.org_id, row.host, row.port, row.description = org_id, host, port, description
    session.flush()
    return row


