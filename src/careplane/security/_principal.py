"""The authenticated caller, as every service function and the access policy see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    clinician = "clinician"
    radiologist = "radiologist"
    counsellor = "counsellor"
    psychiatrist = "psychiatrist"
    researcher = "researcher"
    patient = "patient"
    service = "service"


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    org_id: str
    roles: frozenset[Role]
    token_id: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    display_name: str = ""
    # Set when an OAuth2 client acts (its token's scopes then narrow what the roles allow).
    client_id: str | None = None
    # The Patient this principal is (role ``patient``) or, for a SMART app, the launch patient.
    patient_id: str | None = None
    # A clinician's stated reason for emergency access (header ``X-Break-Glass-Reason``).
    break_glass_reason: str | None = None

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def is_admin(self) -> bool:
        return Role.admin in self.roles
