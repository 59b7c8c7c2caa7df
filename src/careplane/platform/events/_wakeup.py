"""How a hub learns that the outbox has grown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import psycopg

from careplane.platform.events._publish import CHANNEL

log = logging.getLogger(__name__)


class Wakeup(Protocol):
    async def start(self) -> None: ...
    async def wait(self, timeout: float) -> None:
        """Return when new events may exist, or after ``timeout`` seconds at the latest."""
    def poke(self) -> None:
        """Wake the waiter at once (a commit in this process)."""
    async def close(self) -> None: ...


class PollingWakeup:
    """Checks every ``interval`` seconds; any database, and instant for commits in-process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._flag = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flag.wait(), min(timeout, self.interval))
        self._flag.clear()

    def poke(self) -> None:
        # Commits happen on request threads; asyncio.Event is not thread-safe, so the flag is
        # set on the loop that waits on it.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._flag.set()
        else:
            loop.call_soon_threadsafe(self._flag.set)

    async def close(self) -> None:
        return None


class PostgresListenWakeup(PollingWakeup):
    """LISTEN on the outbox channel: a commit in any process wakes every hub within milliseconds.

    Polling stays on as a slow safety net (a dropped connection is re-established and anything
    missed in between is found by the id cursor, so no event is lost).
    """

    def __init__(self, conninfo: str, interval: float = 5.0) -> None:
        super().__init__(interval)
        self.conninfo = conninfo
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self._listen(), name="careplane-event-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), 10)

    async def _listen(self) -> None:
        while not self._closing:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self.poke()  # catch up on anything committed while we were away
                    async for _notify in conn.notifies():
                        self.poke()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect after a database restart
                if self._closing:  # psycopg may turn our cancellation into an error
                    return
                log.warning("event listener lost its connection: %s; reconnecting", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        self._closing = True
        if self._task:
            self._task.cancel()
            # Never let shutdown hang on the listener: give it a moment, then move on.
            await asyncio.wait({self._task}, timeout=5.0)
