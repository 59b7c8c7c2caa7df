"""Fan-out of outbox events to the subscribers of one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select

from careplane.platform.db import Database
from careplane.platform.events._models import EventRecord
from careplane.platform.events._wakeup import Wakeup

log = logging.getLogger(__name__)
_BATCH = 500
# An id below the cursor that has not been seen may belong to a transaction that is still
# open (ids are taken at insert, visible at commit). Such gaps are re-checked this long
# before being written off as rolled back.
_GAP_SECONDS = 60.0
_MAX_GAPS = 10_000


@dataclass(frozen=True)
class Event:
    id: int
    topic: str
    org_id: str | None
    payload: dict[str, Any]
    created_at: datetime


def _unseen(after: int, upto: int | None, gaps: tuple[int, ...]) -> ColumnElement[bool]:
    """Events past the cursor ``after`` (up to ``upto``), and the ``gaps`` below it."""
    newer = EventRecord.id > after
    if upto is not None:
        newer = newer & (EventRecord.id <= upto)
    return newer | EventRecord.id.in_(gaps) if gaps else newer


class Subscription:
    """Receives the events whose topic starts with one of ``prefixes`` (and of its org)."""

    def __init__(self, hub: EventHub, prefixes: tuple[str, ...], org_id: str | None,
                 maxsize: int = 1000) -> None:
        self._hub = hub
        self.prefixes = prefixes
        self.org_id = org_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False

    def wants(self, event: Event) -> bool:
        if event.org_id is not None and self.org_id is not None and event.org_id != self.org_id:
            return False
        return any(event.topic.startswith(p) for p in self.prefixes)

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A subscriber that cannot keep up is cut off rather than slowing everyone;
            # it reconnects with its last id and catches up from the outbox.
            self.overflowed = True

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.overflowed:
            yield await self.queue.get()

    def close(self) -> None:
        self._hub._subscriptions.discard(self)


class EventHub:
    """One per process: follows the outbox with an id cursor and hands events to subscribers."""

    def __init__(self, db: Database, wakeup: Wakeup) -> None:
        self.db = db
        self.wakeup = wakeup
        self._subscriptions: set[Subscription] = set()
        self._cursor = 0
        self._gaps: dict[int, float] = {}
        # Held while a worker thread reads the outbox, so close() can wait for it to hand its
        # connection back before the engine is disposed.
        self._reading = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._cursor = await asyncio.to_thread(self._last_id)
        await self.wakeup.start()
        self._task = asyncio.create_task(self._run(), name="careplane-event-hub")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)
        await self.wakeup.close()
        await asyncio.to_thread(self._wait_for_reader)

    def _wait_for_reader(self) -> None:
        with self._reading:
            pass

    def poke(self) -> None:
        self.wakeup.poke()

    @contextlib.asynccontextmanager
    async def subscribe(self, *prefixes: str, org_id: str | None = None,
                        since: int | None = None) -> AsyncIterator[Subscription]:
        """Subscribe; with ``since`` the stored events after that id are replayed first."""
        sub = Subscription(self, prefixes or ("",), org_id)
        self._subscriptions.add(sub)
        try:
            if since is not None:
                for event in await asyncio.to_thread(self._fetch, since, self._cursor):
                    if sub.wants(event):
                        sub.offer(event)
            yield sub
        finally:
            sub.close()

    def _last_id(self) -> int:
        with self._reading, self.db.session() as session:
            return int(session.scalar(select(func.max(EventRecord.id))) or 0)

    def _fetch(self, after: int, upto: int | None = None,
               gaps: tuple[int, ...] = ()) -> list[Event]:
        with self._reading, self.db.session() as session:
            query = select(EventRecord).where(_unseen(after, upto, gaps))
            rows = session.scalars(query.order_by(EventRecord.id).limit(_BATCH)).all()
            return [Event(r.id, r.topic, r.org_id, r.payload, r.created_at) for r in rows]

    def _ids(self, after: int, gaps: tuple[int, ...]) -> list[int]:
        """The ids alone, which is all the cursor and the gaps need while nobody here is
        subscribed: a busy writer publishes an event per resource, and every process would
        otherwise load each one's payload only to drop it."""
        with self._reading, self.db.session() as session:
            query = select(EventRecord.id).where(_unseen(after, None, gaps))
            return list(session.scalars(query.order_by(EventRecord.id).limit(_BATCH)))

    def _advance(self, event_id: int, now: float) -> bool:
        """Move the cursor past ``event_id``; False if it was seen already."""
        if event_id in self._gaps:
            del self._gaps[event_id]
        elif event_id > self._cursor:
            if len(self._gaps) < _MAX_GAPS:
                for missing in range(self._cursor + 1, min(event_id, self._cursor + 1000)):
                    self._gaps[missing] = now
            self._cursor = event_id
        else:
            return False
        return True

    def _deliver(self, event: Event, now: float) -> None:
        if self._advance(event.id, now):
            for sub in list(self._subscriptions):
                if sub.wants(event):
                    sub.offer(event)

    async def _run(self) -> None:
        while True:
            try:
                await self.wakeup.wait(timeout=5.0)
                while True:
                    now = time.monotonic()
                    self._gaps = {i: t for i, t in self._gaps.items() if now - t < _GAP_SECONDS}
                    if self._subscriptions:
                        events = await asyncio.to_thread(
                            self._fetch, self._cursor, None, tuple(self._gaps))
                        for event in events:
                            self._deliver(event, now)
                        read = len(events)
                    else:
                        ids = await asyncio.to_thread(self._ids, self._cursor,
                                                      tuple(self._gaps))
                        if self._subscriptions:  # one came meanwhile: it needs the events
                            continue
                        for event_id in ids:
                            self._advance(event_id, now)
                        read = len(ids)
                    if read < _BATCH:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event hub could not read the outbox: %s", exc)
                await asyncio.sleep(1.0)
