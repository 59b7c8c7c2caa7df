"""HTTP worker processes that share the connections between them.

``careplane serve --http-workers N`` runs N uvicorn processes on one listening socket. The
kernel wakes every worker for a new connection, and the first to ask takes it, with every
other connection then waiting (asyncio accepts all it can in one go). Two feeds that
connect at the same moment therefore often land on one worker, which does the work of both
on one core while the other idles; a keep-alive connection stays where it landed. Measured
on bundle ingest from two clients to two workers: 15 runs in 25 put both connections on one
worker, at 1,700-2,700 resources/s, against 2,300-3,600/s when each worker had one.

Here each worker takes a connection only while it holds no more open connections than the
least busy live worker; one that holds more declines (the connection stays queued for a
less busy worker, woken by the same event) and looks again half a millisecond later. A
connection that no other worker takes within :data:`PATIENCE_S` is taken anyway, so a
worker that hangs or dies cannot strand it. The counts live in shared memory made before
the workers start; a restarted worker takes over its predecessor's slot.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from multiprocessing.reduction import DupFd, ForkingPickler
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

__all__ = ["PATIENCE_S", "run_workers"]

#: How long a waiting connection is left for a less busy worker before any worker takes it.
PATIENCE_S = 0.02
#: How long a worker that declined waits before it looks again (its other work goes on).
_RECHECK_S = 0.0005


class _Share:
    """Per worker slot: the process that holds it and its open connections."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
        self.pids: Any = ctx.Array("q", workers)  # written under its lock
        self.open: Any = ctx.Array("q", workers, lock=False)  # each slot by its own worker

    def claim(self) -> int | None:
        """This process's slot: its own, or one whose process is gone."""
        me = os.getpid()
        with self.pids.get_lock():
            for i, pid in enumerate(self.pids):
                if pid == me:
                    return i
            for i, pid in enumerate(self.pids):
                if pid == 0 or not _alive(pid):
                    self.pids[i] = me
                    self.open[i] = 0
                    return i
        return None

    def least_busy(self, slot: int) -> bool:
        mine = self.open[slot]
        return all(self.open[i] >= mine for i, pid in enumerate(self.pids)
                   if i != slot and pid != 0 and _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: is there such a process (the workers are our children)
    except ProcessLookupError:
        return False
    return True


class _Connection(socket.socket):
    """An accepted connection that gives its count back when it is closed."""

    _release: Any = None

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        super().close()


class _Listener(socket.socket):
    """The shared listening socket, as each worker sees it (see the module doc)."""

    _share: _Share
    _slot: int | None = None  # None: not listening yet, or no slot left (no balancing)
    _declined_since = 0.0
    _declined_last = 0.0

    def listen(self, backlog: int = socket.SOMAXCONN) -> None:
        """The worker starts serving (asyncio listens as its server starts): from now on it
        takes its share, and counts as a worker that a busier one leaves connections to."""
        super().listen(backlog)
        if self._slot is None:
            self._slot = self._share.claim()

    def accept(self) -> tuple[socket.socket, Any]:
        slot = self._slot
        if slot is not None and not self._share.least_busy(slot):
            now = time.monotonic()
            if now - self._declined_last > 4 * _RECHECK_S:
                self._declined_since = now  # a new wait, not the one declined just before
            self._declined_last = now
            if now - self._declined_since < PATIENCE_S:
                time.sleep(_RECHECK_S)
                raise BlockingIOError  # asyncio: nothing to accept now; it asks again
        fd, address = self._accept()  # type: ignore[attr-defined]
        conn = _Connection(self.family, self.type, self.proto, fileno=fd)
        if slot is not None:
            share = self._share
            share.open[slot] += 1

            def release() -> None:
                share.open[slot] -= 1

            conn._release = release
        return conn, address


def _reduce_listener(sock: _Listener) -> tuple[Any, tuple[Any, ...]]:
    return _rebuild_listener, (DupFd(sock.fileno()), sock.family, sock.type, sock.proto,
                               sock._share)


def _rebuild_listener(df: Any, family: int, kind: int, proto: int, share: _Share
                      ) -> _Listener:
    """The listener in a worker process; it takes its slot once the worker listens."""
    sock = _Listener(family, kind, proto, fileno=df.detach())
    sock._share = share
    return sock


ForkingPickler.register(_Listener, _reduce_listener)


def run_workers(app: str, workers: int, **options: Any) -> None:
    """Serve the application factory ``app`` (an import string) from ``workers`` processes
    that share the connections, until the supervisor is told to stop; ``options`` are
    uvicorn's.

    The workers run asyncio's own event loop, whose accept is the listener's method above;
    uvloop accepts in C, past it."""
    config = uvicorn.Config(app, factory=True, workers=workers, loop="asyncio", **options)
    bound = config.bind_socket()
    listener = _Listener(bound.family, bound.type, bound.proto, fileno=bound.detach())
    listener._share = _Share(config.workers)
    try:
        Multiprocess(config, sockets=[listener]).run()
    finally:
        listener.close()
