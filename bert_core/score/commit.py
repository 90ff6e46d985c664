"""Exactly-once output: the commit record, atomic publishing, stale temp files, the run lock.

One protocol, two storage backends (the local disk and an object store):

1. The run takes the output lock (local: ``flock`` on ``.score.lock``; object store: a
   lease, :mod:`bert_core.score.lease`), so a second run refuses at once.
2. It removes the stale temporaries a killed run left (``.part-0.parquet.tmp-<hex>``).
3. Each output file is written under a hidden temporary name, checked (row count), then
   *published*. Local: the temporary sits in the final folder and is renamed over the
   final name (atomic on POSIX, after an fsync; then the folder is fsynced). Object
   store, where there is no rename: the temporary sits under the output's hidden
   ``.score-tmp/`` prefix and is copied server-side to the final key (``CopyObject``
   creates the final object whole, in one request, or not at all); the run deletes the
   whole prefix in one batch at its end (the next run does, after a crash).
4. The output's Parquet footer carries the commit record (key ``bertflow.score``): input
   fingerprint, model fingerprint, config digest and row counts. A file is *committed*
   when the final name exists and its record matches the current input, model and
   config. The record is the last thing written, so a final object without it cannot exist.

A crash therefore leaves, per file, no output (redone), a stale hidden temporary (removed
by the next run), or a complete committed output (skipped). Readers that skip hidden
names (pyarrow, Spark, DuckDB globs of ``*.parquet``) never see a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.storage import Location, locate

COMMIT_KEY = b"bertflow.score"
LOCK_NAME = ".score.lock"
_TEMP = re.compile(r"^\..+\.tmp-[0-9a-f]{8,32}$")


TEMP_PREFIX = ".score-tmp"


def temp_path(final: str, root: str | None = None) -> str:
    """A fresh hidden name to write ``final`` (a filesystem path) into: beside it, or with ``root`` (the output's
    path on an object store) under ``root/.score-tmp/``, mirroring the final path."""
    head, name = posixpath.split(str(final))
    if root is not None:
        head = posixpath.join(root, TEMP_PREFIX, posixpath.relpath(head, root))
    return posixpath.normpath(posixpath.join(head, f".{name}.tmp-{uuid.uuid4().hex[:12]}"))


def read_commit(path: str | Path, fs: pafs.FileSystem | None = None) -> dict[str, Any] | None:
    """The commit record of an output file, or None when absent, unreadable or not ours."""
    try:
        if fs is None:
            loc = locate(path)
            fs, path = loc.fs, loc.path
        meta = pq.read_metadata(str(path), filesystem=fs).metadata or {}
        raw = meta.get(COMMIT_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # a truncated, foreign or corrupt file is simply not committed
        return None


def commit_status(output: Location, input_fp: str, config_digest: str, model_fp: str | None,
                  listed: set[str] | None = None) -> tuple[bool, str]:
    """``(committed, why)``: is ``output`` a finished output of this input, config and (if given) model?

    ``listed``: the paths one listing of the output found (spares an object store a request per new file).
    """
    if listed is not None and output.path not in listed:
        return False, "new"
    try:
        meta = pq.read_metadata(output.path, filesystem=output.fs).metadata or {}
    except FileNotFoundError:
        return False, "new"
    except Exception:  # a truncated, foreign or corrupt file is simply not committed
        return False, "output without a commit record"
    try:
        record = json.loads(meta[COMMIT_KEY]) if COMMIT_KEY in meta else None
    except ValueError:
        record = None
    if record is None:
        return False, "output without a commit record"
    if record.get("input_fingerprint") != input_fp:
        return False, "input changed"
    if record.get("config_digest") != config_digest:
        return False, "config changed"
    if model_fp is not None and record.get("model_fingerprint") != model_fp:
        return False, "model changed"
    return True, "committed"


def publish(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    """Make the complete temporary file ``tmp`` visible as ``final`` in one step (the commit point)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(Path(final).parent)
        return
    fs.copy_file(tmp, final)  # CopyObject: the final object appears whole or not at all; the temporary goes with
    # the run's .score-tmp/ prefix, in one batch (deleting each would cost three requests per file)


def discard(fs: pafs.FileSystem, tmp: str) -> None:
    """Remove a temporary file after a failure (it may not exist yet)."""
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(tmp)


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


def clean_stale_temps(out: Location | str | Path) -> list[str]:
    """Remove the temporaries a killed run left under ``out`` (``.*.tmp-<hex>`` files, the ``.score-tmp/``
    prefix); call it under the lock."""
    root = out if isinstance(out, Location) else locate(out)
    removed = []
    for info in root.files():
        rel = root.rel_of(info.path)
        if rel.startswith(TEMP_PREFIX + "/"):
            removed.append(rel)
        elif _TEMP.match(posixpath.basename(info.path)):
            discard(root.fs, info.path)
            removed.append(rel)
    if any(r.startswith(TEMP_PREFIX + "/") for r in removed):
        remove_temp_prefix(root)
    return sorted(removed)


def remove_temp_prefix(root: Location) -> None:
    """Delete the output's ``.score-tmp/`` prefix (an object store's temporaries) in one batch."""
    with contextlib.suppress(FileNotFoundError, OSError):
        root.fs.delete_dir(root.child(TEMP_PREFIX).path)


@contextlib.contextmanager
def output_lock(out: Location | str | Path) -> Iterator[Any]:
    """Hold the exclusive, non-blocking lock on the output ``out`` for one run.

    A second scoring run on the same output refuses at once with an InputError instead
    of racing the first. Locally an advisory ``flock`` (reliable on a local disk, not
    across machines on NFS); on an object store a lease (:class:`lease.LeaseLock`). The
    lock yielded has ``check()``, which raises if the lock was lost (a lease taken over).
    """
    root = out if isinstance(out, Location) else locate(out)
    if root.remote:
        from bertflow.bert_core.score.lease import LeaseLock

        with LeaseLock(root.child(LOCK_NAME)) as lease:
            yield lease
        return
    with _local_lock(Path(root.path)) as lock:
        yield lock


class _Held:
    def check(self) -> None:
        """A local lock cannot be taken over while this process lives."""


@contextlib.contextmanager
def _local_lock(root: Path) -> Iterator[_Held]:
    from filelock import FileLock, Timeout

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
        yield _Held()
    finally:
        lock.release()
