"""Real careplane servers in subprocesses, for tests that need more than one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(db_url: str, data_dir: Path, *, job_workers: int = 0, http_workers: int = 1,
                   extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``careplane serve`` and yield its base URL once /readyz answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAREPLANE_ENV": "test",
           "CAREPLANE_DATABASE_URL": db_url, "CAREPLANE_LOG_JSON": "false",
           "CAREPLANE_EVENT_POLL_SECONDS": "0.1", "CAREPLANE_DICOM_PORT": str(free_port()),
           **(extra_env or {})}
    log_path = data_dir / f"server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "careplane", "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--job-workers", str(job_workers), "--http-workers",
             str(http_workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
