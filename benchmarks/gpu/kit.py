"""Shared pieces of the GPU session kit: sizes against the device limits, deadline-bound steps, $OUT.

The device tool (see its README in the tool library) sends the working tree plus the
carried paths, 64 MiB in all, and brings back at most 8 files of at most 16 MiB (64 MiB
together) from ``$OUT``, no deeper than ``$OUT/a/b/file``, names of letters, digits, ``.``,
``_`` and ``-``. One command runs at most 10 minutes. Everything here exists so that a session
with a GPU spends its device minutes measuring, not on a typo or a command cut off before it
wrote its results.

Imports only the standard library (the GPU machine has no Prefect, MLflow or DuckDB).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVCARRY = REPO / ".devcarry"
MIB = 1 << 20
CARRY_LIMIT = 64 * MIB  # working tree + carried paths, per call
OUT_MAX_FILES = 8
OUT_MAX_FILE = 16 * MIB
OUT_MAX_TOTAL = 64 * MIB
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


# ------------------------------------------------------------------------------------------ sizes
def _git_paths(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", *args], check=True, capture_output=True).stdout
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def working_tree_bytes() -> tuple[int, int]:
    """Bytes and file count of what travels without ``carry``: tracked files that exist + untracked, not ignored."""
    total = count = 0
    for rel in set(_git_paths()) | set(_git_paths("--others", "--exclude-standard")):
        p = REPO / rel
        try:
            st = p.lstat()
        except FileNotFoundError:  # deleted in the working tree: does not travel
            continue
        total += st.st_size
        count += 1
    shared = REPO / "shared"  # a shared/ folder inside the checkout travels too
    if shared.is_dir():
        b, n = tree_bytes(shared)
        total, count = total + b, count + n
    return total, count


def tree_bytes(path: Path) -> tuple[int, int]:
    """Bytes and file count under ``path`` (a file or a folder; links counted as links)."""
    if not path.exists():
        return 0, 0
    if path.is_file():
        return path.lstat().st_size, 1
    total = count = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += (Path(root) / f).lstat().st_size
            count += 1
    return total, count


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB ({n / MIB:.1f} MiB)"


def check_carry(carried: dict[str, int], reserve: int = 0, margin: int = 1 * MIB) -> tuple[bool, str]:
    """Working tree + carried bytes (+ ``reserve`` for what a later call adds) against the 64 MiB limit."""
    tree, files = working_tree_bytes()
    total = tree + sum(carried.values()) + reserve
    lines = [f"  working tree (git ls-files + untracked, not ignored; {files} files): {mb(tree)}"]
    lines += [f"  carry {name}: {mb(size)}" for name, size in carried.items()]
    if reserve:
        lines.append(f"  reserved for a later chunk's checkpoint: {mb(reserve)}")
    ok = total + margin <= CARRY_LIMIT
    lines.append(f"  total {mb(total)} of {mb(CARRY_LIMIT)} ({'OK' if ok else 'TOO BIG'}, "
                 f"keeping {mb(margin)} spare for other people's edits)")
    return ok, "\n".join(lines)


# ------------------------------------------------------------------------------------------ $OUT
def out_dir(arg: str | None = None) -> Path:
    """``$OUT`` on the device machine; a local folder for dry runs."""
    path = Path(arg or os.environ.get("OUT") or "/tmp/bertflow-gpu-out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out(out: Path) -> list[str]:
    """Problems that would stop a file in ``out`` from coming back (empty list: all will)."""
    problems, files, total = [], [], 0
    for root, dirs, names in os.walk(out):
        depth = len(Path(root).relative_to(out).parts)
        for n in names + dirs:
            if not OUT_NAME.match(n):
                problems.append(f"{Path(root, n)}: name has characters other than letters, digits, . _ -")
        for n in names:
            p = Path(root, n)
            if p.is_symlink():
                problems.append(f"{p}: a link does not come back")
                continue
            if depth > 2:
                problems.append(f"{p}: deeper than $OUT/a/b/file")
            size = p.stat().st_size
            if size > OUT_MAX_FILE:
                problems.append(f"{p}: {size} bytes > 16 MiB")
            files.append(p)
            total += size
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files under $OUT > {OUT_MAX_FILES}: " + ", ".join(p.name for p in files))
    if total > OUT_MAX_TOTAL:
        problems.append(f"{total} bytes under $OUT > 64 MiB")
    return problems


# ------------------------------------------------------------------------------------------ steps
@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | timeout | skipped
    rc: int | None
    seconds: float
    estimate_s: float
    limit_s: float
    note: str = ""


class Runner:
    """Runs steps in order under one deadline; each step gets ``timeout = min(cap, time left - reserve)``.

    A step's stdout+stderr goes to this process's stdout (the device reply shows its tail) and
    into one merged log file under $OUT (the file limit is 8). A step that would get less than
    ``min_s`` seconds is skipped rather than started and killed half-way.
    """

    def __init__(self, log_path: Path | None, deadline_s: float, reserve_s: float = 20.0,
                 t0: float | None = None) -> None:
        now = time.monotonic()
        self.t0 = now if t0 is None else t0  # log stamps count from here (a driver's own start)
        self.deadline = now + deadline_s
        self.reserve = reserve_s
        self.log_path = log_path
        self.results: list[StepResult] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        line = f"{stamp} {text}"
        print(line, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def run(self, name: str, cmd: list[str], cap_s: float, estimate_s: float, min_s: float = 30.0,
            env: dict[str, str] | None = None) -> StepResult:
        limit = min(cap_s, self.left() - self.reserve)
        if limit < min_s:
            res = StepResult(name, "skipped", None, 0.0, estimate_s, max(limit, 0.0),
                             f"only {max(limit, 0):.0f}s left (needs >= {min_s:.0f}s)")
            self.log(f"=== {name}: SKIPPED ({res.note})")
            self.results.append(res)
            return res
        self.log(f"=== {name}: start (estimate {estimate_s:.0f}s, limit {limit:.0f}s)\n$ {shlex.join(cmd)}")
        t = time.monotonic()
        with open(self.log_path or os.devnull, "a", encoding="utf-8") as fh:
            # own process group: on timeout the whole tree (DataLoader workers, compile workers) goes
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            timed_out = False
            try:
                assert proc.stdout is not None
                for line in _lines_until(proc, t + limit):
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    fh.write(line)
                timed_out = proc.poll() is None
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
            fh.flush()
        seconds = time.monotonic() - t
        rc = proc.returncode
        status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
        res = StepResult(name, status, rc, round(seconds, 1), estimate_s, round(limit, 1))
        self.log(f"=== {name}: {status.upper()} rc={rc} in {seconds:.0f}s (estimate {estimate_s:.0f}s)")
        self.results.append(res)
        return res

    def summary_rows(self) -> list[str]:
        rows = [f"{'step':44s} {'status':8s} {'sec':>6s} {'est':>6s} {'limit':>6s}  note"]
        for r in self.results:
            rows.append(f"{r.name:44s} {r.status:8s} {r.seconds:6.0f} {r.estimate_s:6.0f} {r.limit_s:6.0f}  {r.note}")
        return rows


def _lines_until(proc: subprocess.Popen, deadline: float):
    """Yield the child's output lines until it exits or the deadline passes (non-blocking reads)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = ""
    fd = proc.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if not sel.select(timeout=min(remaining, 1.0)):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk.decode("utf-8", "replace")
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            yield line + "\n"
    if buf:
        yield buf + "\n"
    try:
        proc.wait(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_json_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def environment_report() -> dict:
    """GPU, driver, library versions: one ``nvidia-smi`` snapshot and the import versions (no device work)."""
    env: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "date_utc":
                 time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                              "clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu",
                              "--format=csv"], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        env["nvidia_smi"] = f"unavailable: {exc}"
    for mod in ("torch", "transformers", "tokenizers", "pyarrow", "numpy", "safetensors", "yaml", "triton"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a report, not a check
            env[mod] = f"missing ({type(exc).__name__})"
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except Exception as exc:  # noqa: BLE001
        env["cuda_available"] = f"error: {exc}"
    return env
