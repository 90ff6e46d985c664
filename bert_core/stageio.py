"""What every stage shares: its result type, atomic output directories, manifests, digests.

Stages talk through files: each writes one directory (Parquet shards or a model plus
a ``manifest.json``) and returns a :class:`StageResult` holding its path and a few
numbers. The directory appears atomically (built under a temporary name, then
renamed), so a crash never leaves a half-written stage output visible and a failed
re-run never damages the previous good output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertflow.bert_core.errors import InputError

MANIFEST = "manifest.json"
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # no space, file-size limit (RLIMIT_FSIZE), quota
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors, tokenizers) report errno

ProgressFn = Callable[[int, int], None]
"""``on_progress(done, total)``; total may be 0 when unknown. Stages call it through :func:`report`."""
MetricsFn = Callable[[int, dict[str, float]], None]
"""``on_metrics(step, {"loss": ..., ...})``."""
EpochFn = Callable[[int, dict[str, float]], bool | None]
"""``on_epoch(epoch, metrics)`` after each epoch's evaluation: the validation metrics (``eval_metric`` is the
headline) and the epoch's mean ``train_loss``.
True stops training there (the best epoch so far is kept); an exception aborts the run (nothing is written)."""


@dataclass(frozen=True)
class Progress:
    """How far a stage is, as a progress display shows it: ``done`` of ``total`` ``unit`` and what else it knows.

    ``total`` is 0 when unknown; ``metrics`` are the stage's running headline numbers
    (``loss``, ``tokens_per_s``, ``files_failed``, ...), not a history.
    """

    done: int
    total: int
    unit: str
    metrics: dict[str, float] = field(default_factory=dict)


def report(on_progress: ProgressFn | None, done: int, total: int, unit: str, **metrics: float) -> None:
    """Tell ``on_progress`` how far the stage is.

    A display that wants the whole :class:`Progress` offers an ``event(progress)`` method
    (``tasks.progress``); a plain ``on_progress(done, total)`` callback gets the counts. So
    stages stay free of any display, and plain callbacks (tests, benchmarks) keep working.
    """
    if on_progress is None:
        return
    event = getattr(on_progress, "event", None)
    if event is None:
        on_progress(done, total)
    else:
        event(Progress(done, total, unit, {k: float(v) for k, v in metrics.items() if v is not None}))


@dataclass(frozen=True)
class StageResult:
    """A stage's output directory and its headline numbers (logged as MLflow metrics)."""

    stage: str
    path: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``final``; on success swap it into place.

    On an exception the temporary directory is removed and ``final`` (if any) is
    left exactly as it was. After a ``kill -9`` the temporary directory stays behind; its
    name carries the writer's pid, so the next ``atomic_dir`` on ``final`` removes it.
    """
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable")
    if final.exists() and not final.is_dir():  # else the swap would move the user's file aside, out of sight
        raise InputError(f"output {final} exists and is not a directory; move it away or choose another output")
    _remove_stale_siblings(final)
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with disk_full_as_input_error(final):
        tmp.mkdir()
    _IN_FLIGHT.add(tmp.name)
    try:
        try:
            yield tmp
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise_if_disk_full(exc, final)
            raise
        _swap_into_place(tmp, final)
    finally:
        _IN_FLIGHT.discard(tmp.name)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Put ``tmp`` at ``final``; an existing ``final`` is swapped out in one atomic step where possible.

    Two renames (``final`` away, ``tmp`` in) leave no ``final`` at all when a ``kill -9``
    falls between them; ``renameat2(RENAME_EXCHANGE)`` swaps both names at once, so readers
    always see the old or the new output. Where it is missing (not Linux, some network
    filesystems) the two renames remain.
    """
    if final.exists() and _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
        return
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False if unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


_RENAMEAT2: list = []


def _renameat2():
    if not _RENAMEAT2:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def _remove_stale_siblings(final: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` left beside ``final`` by writers that died.

    A ``kill -9`` (OOM killer, pre-emption) gives ``atomic_dir`` no chance to clean up, and
    each leftover is a whole stage output. A live writer's directory (pid still running on
    this machine) is kept.
    """
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.match(path.name)
        if m and path.name not in _IN_FLIGHT and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


_IN_FLIGHT: set[str] = set()  # this process's own temporary dirs (its pid may be a dead writer's, e.g. in containers)


def _pid_alive(pid: int) -> bool:
    from bertflow.bert_core.orphans import is_running

    # our own pid, not in flight (checked first): a dead writer that had our pid, e.g. in another container
    return pid != os.getpid() and is_running(pid)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written hidden file behind
        raise_if_disk_full(exc, path)
        raise
    os.replace(tmp, path)


def is_disk_full(exc: BaseException) -> bool:
    """An error that means "no room to write" (ENOSPC, EFBIG, EDQUOT): an OSError from Python or Arrow, or a
    Rust library's error (safetensors' SafetensorError is no OSError) that ends in "(os error 28)"."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    found = _RUST_OS_ERROR.search(str(exc)) if isinstance(exc, Exception) else None
    return found is not None and int(found.group(1)) in _DISK_FULL


def raise_if_disk_full(exc: BaseException, path: str | Path) -> None:
    """Re-raise a disk-full OSError as an InputError naming ``path``; other exceptions are left alone.

    A full disk is the user's to fix, not a bug: it gets one clear line, not a traceback.
    """
    if is_disk_full(exc):
        detail = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"no space left writing {path} ({detail}); free disk space (or raise the quota / "
                         "file-size limit) and run again, or write to another directory") from None


@contextlib.contextmanager
def disk_full_as_input_error(path: str | Path) -> Iterator[None]:
    """Block form of :func:`raise_if_disk_full`."""
    try:
        yield
    except Exception as exc:
        raise_if_disk_full(exc, path)
        raise


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (with the bertflow version and a UTC timestamp added)."""
    from bertflow.bert_core import __version__

    body = {"bertflow_version": __version__, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body.update(manifest)
    path = Path(directory) / MANIFEST
    atomic_write_bytes(path, json.dumps(body, indent=2, sort_keys=True, default=str).encode())
    return path


def read_manifest(directory: str | Path, stage: str | None = None) -> dict[str, Any]:
    """Read a stage directory's manifest; a missing one means the directory is not a stage output."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        what = f"a {stage} output" if stage else "a bertflow stage output"
        raise InputError(f"{directory} is not {what}: {MANIFEST} is missing (run that stage first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is corrupt: {exc}") from None


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_digest(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One sha256 over several files' names (relative to ``root``) and contents, order-independent."""
    h = hashlib.sha256()
    items = []
    for p in paths:
        p = Path(p)
        name = str(p.relative_to(root)) if root else p.name
        items.append((name, file_digest(p)))
    for name, digest in sorted(items):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def dir_digest(directory: str | Path, pattern: str = "**/*") -> str:
    """Content digest of every file under ``directory`` matching ``pattern``."""
    root = Path(directory)
    return files_digest((p for p in root.glob(pattern) if p.is_file()), root)


_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt", ".pth")
_model_digests: dict[tuple, str] = {}


def model_dir_digest(directory: str | Path, only: Iterable[str] | None = None) -> str:
    """``sha256:<hex>`` over a model or tokenizer directory's weight, config and tokenizer files.

    The one digest that says "same model" (scoring's commit records, pretraining's
    ``init_from`` and tokenizer identity, fine-tuning's manifest). Hidden files and
    ``manifest.json`` (provenance with timestamps, not part of the model) are skipped, so a
    model re-exported byte for byte keeps its digest. ``only``: just these file names
    (e.g. the tokenizer files of a directory that also holds weights). Cached by
    path, size and mtime: hashing a large checkpoint once per process is enough.
    """
    root = Path(directory).resolve()
    names = set(only) if only is not None else None
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES
                   and p.name != MANIFEST and (names is None or p.name in names)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    key = tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [os.stat(p)])
    if key not in _model_digests:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()}\0{file_digest(p)}\n".encode())
        _model_digests[key] = "sha256:" + h.hexdigest()
    return _model_digests[key]
