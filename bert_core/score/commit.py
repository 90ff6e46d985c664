"""Exactly-once output: the commit record, atomic publishing, stale temp files, the run lock.

Commit protocol: one output file per input file, written under a hidden temporary
name (``.part-0.parquet.tmp-<hex>``) in its final directory, fsynced, checked (row
count), then renamed over the final name (atomic on POSIX) and the directory
fsynced. The output's Parquet footer carries a commit record (key
``bertflow.score``): input fingerprint, model fingerprint, config digest and row
counts. A file is *committed* when the final name exists and its record matches the
current input, model and config: so a crash leaves either no file (redo), a stale
hidden temp (removed by the next run), or a complete file (skipped). Readers that
skip hidden files (pyarrow, Spark, DuckDB globs of ``*.parquet``) never see a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bertflow.bert_core.errors import InputError

COMMIT_KEY = b"bertflow.score"
LOCK_NAME = ".score.lock"
_TEMP = re.compile(r"^\..+\.tmp-[0-9a-f]{8,32}$")


def temp_path(final: Path) -> Path:
    """A fresh hidden sibling of ``final`` to write into."""
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"


def read_commit(path: str | Path) -> dict[str, Any] | None:
    """The commit record of an output file, or None when absent, unreadable or not ours."""
    try:
        meta = pq.read_metadata(path).metadata or {}
        raw = meta.get(COMMIT_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # a truncated, foreign or corrupt file is simply not committed
        return None


def commit_status(output: Path, input_fp: str, config_digest: str, model_fp: str | None) -> tuple[bool, str]:
    """``(committed, why)``: is ``output`` a finished output of this input, config and (if given) model?"""
    if not output.exists():
        return False, "new"
    record = read_commit(output)
    if record is None:
        return False, "output without a commit record"
    if record.get("input_fingerprint") != input_fp:
        return False, "input changed"
    if record.get("config_digest") != config_digest:
        return False, "config changed"
    if model_fp is not None and record.get("model_fingerprint") != model_fp:
        return False, "model changed"
    return True, "committed"


def publish(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the directory (the commit point)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temps(out_dir: str | Path) -> list[str]:
    """Remove hidden ``.*.tmp-<hex>`` files a killed run left under ``out_dir``; call it under the lock."""
    root = Path(out_dir)
    removed = []
    if not root.is_dir():
        return removed
    for path in root.rglob(".*.tmp-*"):
        if path.is_file() and _TEMP.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.relative_to(root).as_posix())
    return sorted(removed)


@contextlib.contextmanager
def output_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive, non-blocking lock on ``out_dir`` (created if missing).

    A second scoring run on the same output refuses at once with an InputError
    instead of racing the first. Advisory ``flock``: reliable on a local disk, not
    across machines on NFS.
    """
    from filelock import FileLock, Timeout

    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create score output directory {root}: {exc.strerror}") from None
    lock = FileLock(str(root / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"another scoring run holds the lock on {root} ({root / LOCK_NAME}); "
                         f"wait for it to finish or write to another output directory") from None
    except OSError as exc:  # a read-only or full output directory: no lock file can be made there
        raise InputError(f"cannot create the lock file {root / LOCK_NAME} ({exc.strerror or exc}): "
                         f"score output directory {root} is not writable") from None
    try:
        yield root
    finally:
        lock.release()
