"""Start and stop the real servers some tests talk to (Prefect, MLflow), bound to 127.0.0.1.

`running` checks that: a server listening on any non-loopback address fails the test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
        if sys.platform.startswith("linux"):
            assert_loopback_only(proc.pid, expect_port=httpx.URL(health_url).port)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when it exited during start-up
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def listening_addresses(pgid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket listening in process group ``pgid`` (from Linux ``/proc``)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == pgid:
                pids.append(stat.parent)
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in (pid / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for pid in pids[:1]:  # one network namespace for the whole group
            with contextlib.suppress(OSError):
                for line in (pid / "net" / table).read_text().splitlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        hex_addr, hex_port = cols[1].split(":")
                        found.append((_proc_address(hex_addr), int(hex_port, 16)))
    return found


def _proc_address(hex_addr: str) -> str:
    """``/proc/net/tcp*`` addresses are 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def assert_loopback_only(pgid: int, expect_port: int | None = None) -> list[tuple[str, int]]:
    """Fail unless every listening socket of process group ``pgid`` is bound to a loopback address.

    ``expect_port``: the port the server answered on must be among those found, so a scan that
    finds nothing (the wrong group, an unreadable ``/proc``) fails instead of passing.
    """
    found = listening_addresses(pgid)
    if expect_port is not None:
        assert expect_port in {port for _, port in found}, (
            f"no listening socket on port {expect_port} found for process group {pgid} (found {found})")
    wide = []
    for address, port in found:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            wide.append(f"{address}:{port}")
    assert not wide, f"server (process group {pgid}) listens on {', '.join(wide)}: bind it to 127.0.0.1"
    return found
