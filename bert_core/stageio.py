"""What every stage shares: its result type, atomic output directories, manifests, digests.

Stages talk through files: each writes one directory (Parquet shards or a model plus
a ``manifest.json``) and returns a :class:`StageResult` holding its path and a few
numbers. The directory appears atomically (built under a temporary name, then
renamed), so a crash never leaves a half-written stage output visible and a failed
re-run never damages the previous good output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bert_core.errors import InputError

MANIFEST = "manifest.json"

ProgressFn = Callable[[int, int], None]
"""``on_progress(done, total)``; total may be 0 when unknown."""
MetricsFn = Callable[[int, dict[str, float]], None]
"""``on_metrics(step, {"loss": ..., ...})``."""


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
    left exactly as it was.
    """
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable")
    tmp = parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_into_place(tmp, final)


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (with the bertflow version and a UTC timestamp added)."""
    from bert_core import __version__

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
