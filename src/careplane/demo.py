"""Demo data for ``careplane demo``: organisations, one user per role, and each domain's data.

Seeding is idempotent: running the demo twice keeps what the first run made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.identity import create_org, create_user
from careplane.security.models import Organisation, User
from careplane.settings import Settings


@dataclass(frozen=True)
class DemoUser:
    username: str
    full_name: str
    roles: tuple[Role, ...]
    org: str = "demo-hospital"

    @property
    def password(self) -> str:
        return f"{self.username}-demo-pass"


ORGS = {"demo-hospital": "Demo General Hospital",
        "partner-university": "Partner University Research Institute"}
USERS = (
    DemoUser("admin", "Sam Okoye (administrator)", (Role.admin,)),
    DemoUser("nurse", "Mina Haddad", (Role.clinician,)),
    DemoUser("doctor", "Dr. Ana Ruiz", (Role.clinician,)),
    DemoUser("radiologist", "Dr. Jun Tanaka", (Role.radiologist, Role.clinician)),
    DemoUser("bioinfo", "Sora Kim", (Role.researcher,)),
    DemoUser("counsellor", "Ms. Park", (Role.counsellor,)),
    DemoUser("psychiatrist", "Dr. Lee", (Role.psychiatrist, Role.clinician)),
    DemoUser("okafor", "Dr. Okafor", (Role.researcher,), "partner-university"),
)

# Each domain registers a function that seeds its demo data (given settings and the database).
DomainSeeder = Callable[[Settings, Database], None]
SEEDERS: list[DomainSeeder] = []


def register_seeder(seeder: DomainSeeder) -> DomainSeeder:
    SEEDERS.append(seeder)
    return seeder


def seed(settings: Settings, db: Database) -> list[dict[str, str]]:
    from careplane.domains import modules

    for _module in modules():  # importing a domain registers its seeder
        pass
    with db.session() as session:
        orgs = {o.slug: o for o in session.scalars(select(Organisation))}
        for slug, name in ORGS.items():
            if slug not in orgs:
                orgs[slug] = create_org(session, slug, name)
        existing = set(session.scalars(select(User.username)))
        for user in USERS:
            if user.username not in existing:
                create_user(session, user.username, user.password, org=orgs[user.org],
                            roles=list(user.roles), full_name=user.full_name)
    for seeder in SEEDERS:
        seeder(settings, db)
    return [{"username": u.username, "password": u.password,
             "roles": ", ".join(r.value for r in u.roles)} for u in USERS]
