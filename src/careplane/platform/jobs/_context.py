"""What a running task sees: its arguments, and ways to report progress and to stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class JobCancelled(Exception):
    """Raised inside a task when someone cancelled its job; the worker records it as cancelled."""


class JobFailed(Exception):
    """A failure that retrying cannot fix (bad input); the job fails at once with this message."""


class JobContext:
    """Handed to every task. Progress and logs are written by the worker, never by the task."""

    def __init__(self, job_id: str, args: dict[str, Any], state: dict[str, Any], attempt: int,
                 report: Callable[[str, dict[str, Any]], None]) -> None:
        self.job_id = job_id
        self.args = args
        self.state = dict(state)
        self.attempt = attempt
        self._report = report
        self._cancelled = threading.Event()
        self._last_progress = 0.0

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled; call it between units of work."""
        if self._cancelled.is_set():
            raise JobCancelled(self.job_id)

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress (throttled to a few writes a second) and honour cancellation."""
        self.check()
        now = time.monotonic()
        if now - self._last_progress >= 0.25 or (total is not None and done >= total):
            self._last_progress = now
            self._report("progress", {"done": done, "total": total, "message": message})

    def log(self, line: str, level: str = "info") -> None:
        self._report("log", {"line": line, "level": level})

    def save_state(self, **values: Any) -> None:
        """Persist a checkpoint (the last finished step); a retry starts with it in ``state``."""
        self.state.update(values)
        self._report("state", dict(self.state))
