"""The Ray executor behaves like a local process pool: results, the function's own exceptions,
and cancellation (on a private local Ray instance)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait

import pytest

pytest.importorskip("ray")

from careplane.platform.jobs.ray_executor import RayExecutor


class Refused(ValueError):
    pass


def square(x: int) -> int:
    return x * x


def refuse(name: str) -> None:
    raise Refused(f"{name} is not acceptable")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    with RayExecutor(num_cpus=2, object_store_mb=80) as ex:
        yield ex


def test_results_come_back_as_futures(executor: RayExecutor) -> None:
    futures = [executor.submit(square, i) for i in range(6)]
    assert [f.result(timeout=60) for f in futures] == [0, 1, 4, 9, 16, 25]
    done, _ = wait([executor.submit(nap, 0.0)], timeout=60, return_when=FIRST_COMPLETED)
    assert len(done) == 1
    assert executor.shares_host


def test_the_functions_own_exception_is_raised(executor: RayExecutor) -> None:
    future = executor.submit(refuse, "lot 7")
    with pytest.raises(Refused, match=r"^lot 7 is not acceptable$"):
        future.result(timeout=60)


def test_shutdown_cancels_what_is_still_running(executor: RayExecutor) -> None:
    import ray

    assert ray.is_initialized()  # the module executor's instance: this one joins it
    ex = RayExecutor()
    slow = ex.submit(nap, 30.0)
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert slow.cancelled()
    assert time.monotonic() - started < 20
    assert ray.is_initialized()  # a joined instance is left running
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 2)
