"""Fault injection for the reliability tests: run a stage call in a forked child and ``kill -9`` it.

Why fork: a fresh Python that imports torch costs 3-5 s, ten seeds per stage would not fit
the suite's budget. A child forked from the warm test process starts in milliseconds and
runs the real stage code; ``SIGKILL`` gives it no chance to clean up, exactly like the OOM
killer or a pre-empted node. Torch is switched to one intra-op thread before forking
(OpenMP is not fork-safe once its thread pool exists) and the child leaves with
``os._exit`` so nothing of pytest runs in it.

The kill time is seeded: a uniform fraction (5-85 %) of the time an uninterrupted forked run
of the same call took, so kills land anywhere in the run's set-up and work. Each kill
reports whether it landed mid-run (the child was still working) or after it had finished.
The narrowest windows (a rename, a delete) are hit on purpose instead: :func:`kill_at`
arms a :func:`die` call at exactly that point.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class Killed:
    """How one fault-injected run ended."""

    seed: int
    delay_s: float  # when SIGKILL was sent, seconds after the fork
    landed: bool  # the child was still working when it was killed (False: it had already finished)
    state: str = ""  # what the test found on disk right after the kill (set by the test)


@dataclass
class KillLog:
    """The kills of one stage's test, for its summary line (seeds, landed mid-run, after completion)."""

    stage: str
    kills: list[Killed] = field(default_factory=list)

    @property
    def landed(self) -> int:
        return sum(k.landed for k in self.kills)

    def add(self, killed: Killed) -> None:
        self.kills = [k for k in self.kills if k.seed != killed.seed] + [killed]

    def summary(self) -> str:
        n = len(self.kills)
        states = Counter(k.state for k in self.kills if k.landed)
        found = ", ".join(f"{v}x {s}" for s, v in sorted(states.items()))
        return (f"{self.stage}: {n} seeds, {self.landed} kills landed mid-run ({found}), "
                f"{n - self.landed} after completion")


def _one_thread() -> None:
    """Left at one thread for the caller to restore (the test module uses the ``one_torch_thread`` fixture)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


def _forget_parents_fork_server() -> None:
    """In a forked child: drop the parent's fork-server handle, so a process pool here starts its own.

    The child inherits the handle but is not the fork server's parent: using it fails in
    ``os.waitpid`` (ChildProcessError) as soon as the stage starts a forkserver pool.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None


def _child(fn: Callable[[], object], conn) -> None:
    try:
        _forget_parents_fork_server()
        fn()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        try:
            conn.send(traceback.format_exc())
        finally:
            os._exit(1)
    os._exit(0)


def _start(fn: Callable[[], object]):
    _one_thread()
    recv, send = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(fn, send))  # not a daemon: stages may start worker pools
    proc.start()
    send.close()
    return proc, recv


def _failure(proc, recv) -> str:
    try:
        return recv.recv() if recv.poll(1) else f"exit code {proc.exitcode}"
    except EOFError:
        return f"exit code {proc.exitcode}"


def run_forked(fn: Callable[[], object], timeout: float = 120.0) -> float:
    """Run ``fn()`` to completion in a forked child; return its wall time (fork to exit)."""
    t0 = time.perf_counter()
    proc, recv = _start(fn)
    proc.join(timeout)
    seconds = time.perf_counter() - t0
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"forked run did not finish in {timeout} s")
    if proc.exitcode != 0:
        raise AssertionError(f"forked run failed:\n{_failure(proc, recv)}")
    recv.close()
    return seconds


def calibrate(call: Callable[[Path], object], root: Path, runs: int = 2) -> tuple[float, list[Path]]:
    """Time ``call(out)`` uninterrupted in forked children, each into a fresh ``root/forked-<i>``.

    Returns the fastest wall time (one slow run on a busy machine would push the kill
    times past the end of the run) and the output dirs, to compare with a reference.
    """
    outs = [root / f"forked-{i}" for i in range(runs)]
    return min(run_forked(lambda out=out: call(out)) for out in outs), outs


def kill_during(fn: Callable[[], object], seed: int, expected_s: float, lo: float = 0.05, hi: float = 0.85) -> Killed:
    """Start ``fn()`` in a forked child and ``SIGKILL`` it after a seeded fraction of ``expected_s``.

    ``expected_s`` is the wall time of an uninterrupted forked run (:func:`run_forked`);
    the delay is uniform in ``[lo, hi] * expected_s``. A child that failed on its own (not
    killed, non-zero exit) fails the test with its traceback.
    """
    delay = random.Random(seed).uniform(lo, hi) * expected_s
    t0 = time.perf_counter()
    proc, recv = _start(fn)
    proc.join(max(0.0, delay - (time.perf_counter() - t0)))
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    landed = proc.exitcode == -signal.SIGKILL  # 0: it finished first (maybe while we sent the signal)
    if not landed and proc.exitcode != 0:
        raise AssertionError(f"forked run failed before the kill:\n{_failure(proc, recv)}")
    recv.close()
    return Killed(seed, round(delay, 4), landed)


def kill_when(fn: Callable[[], object], ready: Callable[[int], bool], timeout: float = 60.0,
              before_kill: Callable[[int], None] | None = None) -> bool:
    """Start ``fn()`` in a forked child and SIGKILL it as soon as ``ready(child_pid)`` is true.

    ``before_kill(child_pid)`` runs just before the signal (e.g. to list the child's own
    children). Returns whether the kill landed mid-run (False: the child finished first).
    """
    proc, recv = _start(fn)
    deadline = time.monotonic() + timeout
    while proc.is_alive() and not ready(proc.pid):
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            raise AssertionError(f"the child never became ready to be killed in {timeout} s")
        time.sleep(0.005)
    if proc.is_alive():
        if before_kill is not None:
            before_kill(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    landed = proc.exitcode == -signal.SIGKILL
    if not landed and proc.exitcode != 0:
        raise AssertionError(f"forked run failed before the kill:\n{_failure(proc, recv)}")
    recv.close()
    return landed


def die() -> None:
    """``kill -9`` this process (the forked child), at exactly the point that calls it."""
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner: object, name: str, before: Callable[[], None] | None = None,
         after: Callable[[], None] | None = None) -> None:
    """Replace ``owner.name`` with a function that calls ``before()``, the original, then ``after()``.

    Meant for the forked child only (see :func:`kill_at`): the parent never sees the change.
    """
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        result = original(*args, **kwargs)
        if after is not None:
            after()
        return result

    setattr(owner, name, wrapped)


def kill_at(fn: Callable[[], object], arm: Callable[[], None], timeout: float = 60.0) -> None:
    """Run ``arm()`` then ``fn()`` in a forked child; ``arm`` sets up the :func:`die` call (e.g. with :func:`wrap`).

    Fails unless the child was killed by that SIGKILL (a child that finished or failed means
    the targeted point was never reached).
    """
    def armed() -> None:
        arm()
        fn()

    proc, recv = _start(armed)
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"the armed child did not reach its kill point in {timeout} s")
    if proc.exitcode != -signal.SIGKILL:
        raise AssertionError(f"the armed child was not killed at its kill point:\n{_failure(proc, recv)}")
    recv.close()


def visible_parquet(root: str | Path) -> list[Path]:
    """``*.parquet`` files as a reader's glob sees them: no hidden or ``_``-prefixed path part."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.parquet")
                  if not any(s.startswith((".", "_")) for s in p.relative_to(root).parts))


def hidden_leftovers(parent: str | Path) -> list[str]:
    """Temporary names a killed writer leaves behind (``.x.tmp-*``, ``.x.old-*``) anywhere under ``parent``."""
    parent = Path(parent)
    return sorted(p.relative_to(parent).as_posix() for p in parent.rglob(".*")
                  if ".tmp-" in p.name or ".old-" in p.name)
