"""Pool worker processes that do not outlive the stage process that started them.

When a stage is killed (``kill -9``, the OOM killer, a pre-empted node) its
``ProcessPoolExecutor`` gets no chance to stop the workers, and they never notice on
their own: each worker holds both ends of its task queue's pipe, so it waits for work
forever - and with the ``forkserver`` start method it also keeps the fork server and the
resource tracker alive. Measured here: after a kill the workers were still there minutes
later, holding memory and any stdout pipe a supervisor was reading (which then never saw
end-of-file). :func:`exit_with` (called from the pool's initializer) gives each worker a
watcher thread that ends the worker soon after the stage process is gone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

POLL_S = 0.5  # how often a worker checks on the stage process


def worker_start_method() -> str:
    """``forkserver`` (else ``spawn``) for worker processes: never a fork of the stage process, whose
    threads (a Prefect flow's, MLflow's metrics monitor, a pin-memory thread) may hold locks a fork copies."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def exit_with(stage_pid: int, poll_s: float = POLL_S) -> None:
    """Pool-initializer helper: end this worker process (``os._exit``) once ``stage_pid`` has died."""
    if stage_pid == os.getpid():
        return
    threading.Thread(target=_watch, args=(stage_pid, poll_s), name="exit-with-stage", daemon=True).start()


def _watch(pid: int, poll_s: float) -> None:
    while is_running(pid):
        time.sleep(poll_s)
    os._exit(1)  # no cleanup: the stage that owned this work is gone, its next run starts afresh


def is_running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed process stays one until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): trust kill(0)
        return True
    return state not in (b"Z", b"X")
