"""Demo patients for ``careplane demo``: a synthetic population in the demo hospital's store.

The patients come from ``careplane synth`` with a fixed seed and are stored through the FHIR
store as the demo nurse (so they belong to the demo hospital, and every write is authorised
and audited like any other). Seeding is idempotent: when the hospital already holds patients,
nothing is added. ``CAREPLANE_DEMO_PATIENTS`` sets how many (default 200: a minute or two).
"""

from __future__ import annotations

import logging
import os

from sqlalchemy import func, select

from careplane.platform.db import Database
from careplane.records.maintenance import analyze
from careplane.records.models import resource
from careplane.records.synth import generate, load_bundles
from careplane.security import Principal, Role
from careplane.security.models import Membership, Organisation, User
from careplane.settings import Settings

__all__ = ["DEMO_PATIENTS", "DEMO_SEED", "seed_records"]

log = logging.getLogger(__name__)
DEMO_ORG = "demo-hospital"
DEMO_USER = "nurse"
DEMO_SEED = 2024
DEMO_PATIENTS = 200


def seed_records(settings: Settings, db: Database) -> None:
    count = int(os.environ.get("CAREPLANE_DEMO_PATIENTS", DEMO_PATIENTS))
    with db.session() as session:
        org = session.scalar(select(Organisation).where(Organisation.slug == DEMO_ORG))
        user = session.scalar(select(User).where(User.username == DEMO_USER))
        if org is None or user is None:
            log.warning("records demo: no %s / %s to own the patients", DEMO_ORG, DEMO_USER)
            return
        held = session.scalar(select(func.count()).select_from(resource).where(
            resource.c.org_id == org.id, resource.c.resource_type == "Patient")) or 0
        roles = frozenset(Role(m.role) for m in session.scalars(
            select(Membership).where(Membership.user_id == user.id,
                                     Membership.org_id == org.id)))
        principal = Principal(user.id, user.username, org.id, roles or frozenset({
            Role.clinician}), "demo-seed", display_name=user.full_name)
        org_name = org.name
    if held or count <= 0:
        return
    log.info("records demo: loading %d synthetic patients", count)
    load_bundles(db, principal, generate(count, DEMO_SEED, org_name=org_name),
                 base=f"http://{settings.host}:{settings.port}/fhir")
    analyze(db)
