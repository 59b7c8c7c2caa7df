"""Run a task's pieces as Ray tasks: the cluster counterpart of a local process pool.

Why it exists: a job's heavy, parallel work (the genomics pipeline's alignment chunks and
calling regions) is written against ``concurrent.futures``: ``submit`` a module-level function
with plain arguments, wait on the futures. :class:`RayExecutor` offers that same interface and
runs each submitted function as a Ray remote task, so the very same task functions spread over
a Ray cluster instead of this machine's cores. It needs the ``cluster`` extra
(``pip install 'careplane[cluster]'``).

The functions exchange files by path, so every Ray node must see the paths the job uses (the
data directory on a shared file system); on a single machine (``address=None`` starts a local
Ray instance) that holds by itself.

Exceptions raised by a remote function come back as the function's own exception (Ray wraps
them in ``RayTaskError``; the wrapper is removed), so callers handle failures the same way with
either executor.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from types import TracebackType
from typing import Any

__all__ = ["RayExecutor", "RayUnavailable", "ray_available"]


class RayUnavailable(RuntimeError):
    """Ray is not installed (the ``cluster`` extra) or its cluster cannot be reached."""


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("the Ray executor needs the 'cluster' extra: "
                             "pip install 'careplane[cluster]'") from exc
    return ray


class RayExecutor:
    """``submit``/``shutdown`` like :class:`concurrent.futures.ProcessPoolExecutor`, on Ray.

    ``address`` names a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
    ``None`` joins the Ray instance this process already started, or starts a private local
    one with ``num_cpus`` CPUs and ``object_store_mb`` of object store, shut down again by
    :meth:`shutdown`. A cluster this executor did not start is left running.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_mb: int | None = 256, cpus_per_task: float = 1.0) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if address is None:
                options["num_cpus"] = num_cpus
                if object_store_mb is not None:
                    options["object_store_memory"] = object_store_mb * 1024 * 1024
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: {exc}"
                                     ) from exc
            self._owns = True
        self._cpus_per_task = cpus_per_task
        self._remote: dict[Callable[..., Any], Any] = {}
        self._pending: dict[Future[Any], Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def shares_host(self) -> bool:
        """Whether every task runs on this machine (so they may talk through named pipes)."""
        return len(self._ray.nodes()) <= 1

    def _remote_of(self, fn: Callable[..., Any]) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=self._cpus_per_task,
                                                         max_retries=0)(fn)
        return remote

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start ``fn(*args, **kwargs)`` as a Ray task; its future resolves like a local one."""
        if self._closed:
            raise RuntimeError("cannot submit to a RayExecutor after shutdown")
        ref = self._remote_of(fn).remote(*args, **kwargs)
        future: Future[Any] = Future()
        with self._lock:
            self._pending[future] = ref
        ray_future = ref.future()

        def settle(done: Future[Any]) -> None:
            with self._lock:
                self._pending.pop(future, None)
            if future.cancelled():
                return
            error = done.exception() if not done.cancelled() else None
            # shutdown() may cancel the future at any moment: then there is nothing to set.
            with contextlib.suppress(InvalidStateError):
                if done.cancelled():
                    future.cancel()
                elif error is not None:
                    future.set_exception(_unwrap(self._ray, error))
                else:
                    future.set_result(done.result())

        ray_future.add_done_callback(settle)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; optionally cancel what is still running, and wait for the rest."""
        self._closed = True
        with self._lock:
            pending = dict(self._pending)
        if cancel_futures:
            for future, ref in pending.items():
                # The future first, so Ray's report of the cancelled task finds it settled.
                if not future.cancel():
                    continue  # it has just finished
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=True)
        if wait:
            for future in pending:
                if not future.cancelled():
                    with contextlib.suppress(Exception):  # cancelled while waiting
                        future.exception()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown(wait=True)


def _unwrap(ray: Any, error: BaseException) -> BaseException:
    """The remote function's own exception, without Ray's ``RayTaskError`` wrapper."""
    task_error = getattr(ray.exceptions, "RayTaskError", None)
    if task_error is not None and isinstance(error, task_error):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return error
