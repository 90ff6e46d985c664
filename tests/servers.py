"""Start and stop the real servers some tests talk to (Prefect, MLflow), bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[None]:
    """Run ``cmd`` in its own process group until the block ends; wait until ``health_url`` answers 200."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited during start-up (code {proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd[:3])} did not become healthy in {timeout:.0f} s")
            time.sleep(1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
