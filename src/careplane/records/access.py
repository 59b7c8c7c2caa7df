"""The records side of the access decision: describe the target, let security decide.

Every FHIR interaction passes through :func:`check`, which builds the
``Target(kind="records:<Type>", org_id, id, patient_id)`` of what is touched and calls
``careplane.security.guard.authorize`` (which decides and writes the audit record). A refusal
comes back as a :class:`FhirError` so that it reaches the client as an OperationOutcome, inside
a batch entry as much as on a plain request. No access rule is written here.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy.orm import Session

from careplane.records.errors import FhirError
from careplane.security import Principal
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["Action", "check", "labels_of", "target"]

SOURCE = "fhir"


def labels_of(content: dict[str, Any] | None) -> frozenset[str]:
    """The resource's security labels (``meta.security`` codes: PSY, ETH, HIV, R, V...)."""
    meta = content.get("meta") if isinstance(content, dict) else None
    security = meta.get("security") if isinstance(meta, dict) else None
    if not isinstance(security, list):
        return frozenset()
    return frozenset(c["code"] for c in security
                     if isinstance(c, dict) and isinstance(c.get("code"), str))


def target(resource_type: str, org_id: str | None, id: str | None = None,
           patient_id: str | None = None, content: dict[str, Any] | None = None) -> Target:
    """The Target of one resource; ``content`` gives its security labels to the policy."""
    return Target(kind=f"records:{resource_type}", org_id=org_id, id=id, patient_id=patient_id,
                  labels=labels_of(content))


def check(session: Session, principal: Principal, action: Action, what: Target, *,
          detail: dict[str, Any] | None = None) -> None:
    """Authorise (and audit) ``action`` on ``what``, or raise FhirError 403."""
    try:
        authorize(session, principal, action, what, source=SOURCE, detail=detail)
    except HTTPException as exc:
        raise FhirError.of(exc.status_code, "forbidden", str(exc.detail)) from None
