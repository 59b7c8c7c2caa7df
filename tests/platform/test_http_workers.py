"""The listener each HTTP worker accepts on: the least busy worker takes a new connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from careplane.platform.http_workers import PATIENCE_S, _Listener, _Share


@pytest.fixture
def listener() -> Iterator[_Listener]:
    """A listener in slot 0 of two; slot 1 held by a live process (this one's parent)."""
    share = _Share(2)
    sock = _Listener(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock._share = share
    assert sock._slot is None
    sock.listen(8)  # as a worker's server starts: it takes its slot
    share.pids[1] = os.getppid()
    yield sock
    sock.close()


def _connect(listener: _Listener) -> socket.socket:
    return socket.create_connection(listener.getsockname(), timeout=5)


def _accept_waiting(listener: _Listener) -> tuple[socket.socket, float]:
    """Accept as asyncio does (ask again after each 'nothing now'), and how long it took."""
    started = time.monotonic()
    while True:
        try:
            conn, _ = listener.accept()
            return conn, time.monotonic() - started
        except BlockingIOError:
            continue


def test_a_worker_takes_a_connection_while_no_other_is_less_busy(listener: _Listener
                                                                  ) -> None:
    assert listener._slot == 0 and listener._share.claim() == 0  # its own slot, kept
    client = _connect(listener)
    conn, waited = _accept_waiting(listener)
    assert waited < PATIENCE_S
    assert list(listener._share.open) == [1, 0]
    conn.close()
    conn.close()  # closing twice gives the count back once
    assert list(listener._share.open) == [0, 0]
    client.close()


def test_a_busier_worker_leaves_a_connection_to_the_least_busy_then_takes_it(
        listener: _Listener) -> None:
    listener._share.open[0] = 1  # one connection already, the other worker none
    client = _connect(listener)
    with pytest.raises(BlockingIOError):
        listener.accept()
    # nobody took it: after PATIENCE_S it is taken anyway, so no connection is stranded
    conn, waited = _accept_waiting(listener)
    assert PATIENCE_S * 0.9 <= waited < PATIENCE_S * 10
    assert list(listener._share.open) == [2, 0]
    conn.close()
    client.close()


def test_a_gone_workers_slot_is_taken_over_and_its_count_forgotten(listener: _Listener
                                                                    ) -> None:
    share = listener._share
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, check=True, text=True)
    gone = int(ended.stdout)
    share.pids[1], share.open[1] = gone, 5
    # a worker that is gone does not count as less busy
    share.open[0] = 3
    client = _connect(listener)
    conn, waited = _accept_waiting(listener)
    assert waited < PATIENCE_S
    conn.close()
    client.close()
    # a successor takes over the slot of a worker that is gone, from nothing
    share.pids[0] = gone
    assert share.claim() == 0
    assert (share.pids[0], share.open[0]) == (os.getpid(), 0)
