"""The run lock on an object store, where there is no ``flock``: a lease kept alive by its holder.

Each run that wants the lock writes its own claim object ``<lock>/<id>.json`` (holder's
host, pid and lease), then lists the lock prefix. With S3's strong read-after-write and
list-after-write consistency (AWS since 2020; MinIO, Ceph RGW and R2 alike):

- **At most one holder.** A run holds the lock only if its listing shows no live claim
  but its own; otherwise it deletes its claim and refuses. If runs A and B both held
  it, A listed before B's claim existed and B listed before A's did; but each wrote its
  claim before listing, so A wrote < A listed < B wrote < B listed < A wrote: impossible.
  (Two runs starting at the same moment may both refuse; neither runs twice.)
- **A crashed holder's successor takes over safely.** The holder rewrites its claim every
  ``LEASE_S / 4`` seconds. A claim is dead when its host is this machine and its process is
  gone, or when it was last renewed more than ``LEASE_S`` before the successor's own claim
  (both times are the store's modification times, so no two machines' clocks are compared).
  The successor deletes dead claims, then decides as above.
- **A stalled holder learns it lost the lock.** Renewal first checks that its claim still
  exists; when a successor removed it, :meth:`LeaseLock.check` raises and the run stops.

The lock saves work and keeps one run's manifest coherent; exactly-once output does not
depend on it: every output object is published whole (``commit``), so even two writers
racing on one key leave one complete file whose commit record matches its content.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.storage import Location

LEASE_S = 60.0


class LeaseLock:
    """``with LeaseLock(location_of_lock_prefix): ...`` holds the lock; InputError when another run does."""

    def __init__(self, prefix: Location, lease_s: float = LEASE_S) -> None:
        self.prefix, self.lease_s = prefix, lease_s
        self.id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        self.claim = prefix.child(f"{self.id}.json")
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ acquire/release
    def __enter__(self) -> LeaseLock:
        self._write_claim()
        try:
            mine = self.claim.info().mtime
            rivals = []
            for info in self.prefix.files():
                if info.path == self.claim.path or not info.path.endswith(".json"):
                    continue
                holder = self._read(info.path)
                if self._dead(holder, info.mtime, mine):
                    with contextlib.suppress(OSError):
                        self.prefix.fs.delete_file(info.path)  # taking over a crashed run's lease
                    continue
                rivals.append(holder)
            if rivals:
                who = rivals[0]
                raise InputError(f"another scoring run holds the lock on {self.prefix.uri.rsplit('/', 1)[0]} "
                                 f"({self.prefix.uri}: host {who.get('host', '?')}, pid {who.get('pid', '?')}); "
                                 f"wait for it to finish or write to another output")
        except BaseException:
            self.claim.delete()
            raise
        self._thread = threading.Thread(target=self._renew, name="score-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._lost is None:
            self.claim.delete()

    def check(self) -> None:
        """Raise when the lease was lost (a successor judged this run dead and took over)."""
        if self._lost is not None:
            raise InputError(f"the lock on {self.prefix.uri} was taken over ({self._lost}); this run stopped "
                             f"so that only one run writes the output")

    # ------------------------------------------------------------------------------------ internals
    def _write_claim(self) -> None:
        body = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
                "lease_s": self.lease_s, "renewed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.claim.write_bytes(json.dumps(body).encode())
        except OSError as exc:
            raise InputError(f"cannot write the lock {self.claim.uri}: {exc}") from None

    def _read(self, path: str) -> dict[str, Any]:
        try:
            with self.prefix.fs.open_input_stream(path) as fh:
                return json.loads(fh.read())
        except (OSError, ValueError):
            return {}  # vanished meanwhile (released) or not ours: judged by its age alone

    def _dead(self, holder: dict[str, Any], renewed, now) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _alive(holder["pid"], holder.get("started")):
                return True  # its process is gone (or the pid now belongs to another process)
        if renewed is None or now is None:
            return False
        return (now - renewed).total_seconds() > float(holder.get("lease_s", self.lease_s))

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self.claim.is_file():
                    self._lost = "its claim was removed"
                    return
                self._write_claim()
            except Exception:  # a network blip: try again at the next tick, the lease has slack
                continue


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (None: unknown); with the pid, it names one process for good."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Is the process that wrote a claim (``pid`` started at ``started``) still running on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    now = _process_start(pid)
    return started is None or now is None or now == started
