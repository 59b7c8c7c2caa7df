"""Answers read ahead: facts one statement fetched for lookups that would each cost a round trip.

A FHIR read needs the caller's token, the resource and the patient's consents. Each has a
lookup of its own (security's token lookup, the store's current row, the consent rules), and
each is one round trip to PostgreSQL. A caller that knows it will need all of them can fetch
them in one statement and leave each answer in the session under the lookup's key; the lookup
then takes it from there instead of asking the database.

An answer is taken once (a later lookup of the same key asks the database again), and only
read sessions carry them, so no answer can outlive a change made through the same session.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from sqlalchemy.orm import Session

_AHEAD = "careplane.ahead"
MISSING: Any = object()
"""What :func:`recall` returns for a key nothing was read ahead for."""


def remember(session: Session, key: Hashable, value: Any) -> None:
    """Leave ``value`` (None included: "looked, found nothing") as the answer to ``key``."""
    session.info.setdefault(_AHEAD, {})[key] = value


def recall(session: Session, key: Hashable) -> Any:
    """The answer read ahead for ``key``, taken out of the session, or :data:`MISSING`."""
    ahead = session.info.get(_AHEAD)
    if not ahead:
        return MISSING
    return ahead.pop(key, MISSING)
