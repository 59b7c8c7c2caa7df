"""Task functions used by the job tests; workers import them by path like any real task."""

from __future__ import annotations

import time
from pathlib import Path

from careplane.platform.jobs import JobContext, JobFailed


def add(ctx: JobContext) -> dict[str, int]:
    ctx.log(f"adding {ctx.args['a']} and {ctx.args['b']}")
    return {"sum": int(ctx.args["a"]) + int(ctx.args["b"])}


def count_slowly(ctx: JobContext) -> dict[str, int]:
    """Counts to ``n`` with a checkpoint per step, so a recovered run resumes where it stopped."""
    n = int(ctx.args["n"])
    start = int(ctx.state.get("next", 0))
    marker = ctx.args.get("marker")
    for i in range(start, n):
        if marker:
            Path(marker).write_text(f"{i}\n")
        time.sleep(float(ctx.args.get("delay", 0.2)))
        ctx.save_state(next=i + 1)
        ctx.progress(i + 1, n, f"step {i + 1} of {n}")
    return {"counted": n, "resumed_from": start, "attempt": ctx.attempt}


def flaky(ctx: JobContext) -> dict[str, int]:
    """Fails on its first attempts, then succeeds: exercises retry with backoff."""
    if ctx.attempt < int(ctx.args["succeed_on"]):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def bad_input(ctx: JobContext) -> None:
    raise JobFailed("reads.fq line 4: quality string shorter than the sequence")


def wait_for_cancel(ctx: JobContext) -> None:
    for _ in range(600):
        ctx.check()
        time.sleep(0.05)
