"""Publish/subscribe that survives restarts and crosses processes.

An event is written to an outbox table in the same transaction as the change it announces, so
subscribers never hear of a change that was rolled back, and a server that restarts can resume
from the last event it delivered (SSE ``Last-Event-ID``). How subscribers learn that new events
exist is the pluggable part: :class:`PollingWakeup` (any database, the embedded default) or
:class:`PostgresListenWakeup` (PostgreSQL LISTEN/NOTIFY, immediate, across API workers).
"""

from careplane.platform.events._hub import Event, EventHub, Subscription
from careplane.platform.events._models import EventRecord
from careplane.platform.events._publish import CHANNEL, mark_published, prune, publish
from careplane.platform.events._wakeup import PollingWakeup, PostgresListenWakeup, Wakeup

__all__ = [
    "CHANNEL",
    "Event",
    "EventHub",
    "EventRecord",
    "PollingWakeup",
    "PostgresListenWakeup",
    "Subscription",
    "Wakeup",
    "mark_published",
    "prune",
    "publish",
]
