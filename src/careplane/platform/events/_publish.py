from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from careplane.platform.db import utcnow
from careplane.platform.events._models import EventRecord

CHANNEL = "careplane_events"
PUBLISHED = "careplane.events.published"


def mark_published(session: Session) -> None:
    """Note that ``session`` wrote to the outbox, so its commit wakes this process's hub
    (``Platform.session``); a session that published nothing costs the hub no outbox read."""
    session.info[PUBLISHED] = True


def publish(session: Session, topic: str, payload: dict[str, Any], *,
            org_id: str | None = None) -> int:
    """Record an event in the caller's transaction; it is delivered only if that commits.

    ``org_id`` scopes delivery: subscribers of other organisations never receive it.
    """
    record = EventRecord(topic=topic, payload=payload, org_id=org_id)
    session.add(record)
    session.flush()
    mark_published(session)
    if session.get_bind().dialect.name == "postgresql":
        # NOTIFY is transactional too: listeners wake only when the change is visible.
        session.execute(text("SELECT pg_notify(:channel, :id)"),
                        {"channel": CHANNEL, "id": str(record.id)})
    return record.id


def prune(session: Session, *, older_than: timedelta) -> int:
    """Delete delivered history past the retention window; returns how many rows went."""
    result = session.execute(
        delete(EventRecord).where(EventRecord.created_at < utcnow() - older_than))
    return int(getattr(result, "rowcount", 0) or 0)
