"""Expand ``ingest.inputs`` (files, directories, globs) into a sorted, de-duplicated file list.

Rules:
- a path or glob that matches nothing is an :class:`InputError` naming it;
- directories are walked recursively (hive-partitioned Parquet dirs included); inside them
  only files with a known extension are taken, hidden and ``_``-prefixed files (``_SUCCESS``,
  ``.crc``) are skipped silently, other files are listed as ``skipped``;
- a file named explicitly (or matched by a glob) with an unknown extension is kept with
  format ``None`` so the stage reports it as rejected;
- the same file reached twice is read once.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from bertflow.bert_core.errors import InputError

FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSIONS = {".gz": "gz", ".gzip": "gz", ".zst": "zst", ".zstd": "zst"}


@dataclass(frozen=True)
class InputFile:
    path: str  # as the user's input expands (relative paths stay relative to the CWD), POSIX-style
    format: str | None  # txt / jsonl / json / csv / tsv / parquet, None = unknown
    compression: str | None  # gz / zst / None
    size: int  # bytes on disk


def classify(path: str | Path) -> tuple[str | None, str | None]:
    """``(format, compression)`` from a file name, e.g. ``a.jsonl.zst`` -> ``("jsonl", "zst")``."""
    name = Path(path).name.lower()
    compression = None
    stem, ext = os.path.splitext(name)
    if ext in COMPRESSIONS:
        compression = COMPRESSIONS[ext]
        stem, ext = os.path.splitext(stem)
    return FORMATS.get(ext), compression


def discover(inputs: tuple[str, ...] | list[str]) -> tuple[list[InputFile], list[str]]:
    """Return ``(files, skipped)``; raise InputError for an input that matches nothing."""
    seen: set[str] = set()
    files: list[InputFile] = []
    skipped: list[str] = []

    def add(p: str, explicit: bool) -> None:
        key = os.path.realpath(p)
        if key in seen:
            return
        fmt, comp = classify(p)
        if fmt is None and not explicit:
            skipped.append(_posix(p))
            return
        seen.add(key)
        files.append(InputFile(_posix(p), fmt, comp, os.path.getsize(p)))

    for spec in inputs:
        matches = _expand(spec)
        for m in matches:
            if os.path.isdir(m):
                walked = _walk(m)
                if not walked:
                    raise InputError(f"ingest input {spec!r}: directory {m} holds no files")
                for f in walked:
                    add(f, explicit=False)
            else:
                add(m, explicit=True)
    return files, skipped


def _expand(spec: str) -> list[str]:
    path = os.path.expanduser(spec)
    if glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise InputError(f"ingest input {spec!r}: the glob matches no files (relative to {os.getcwd()})")
        return matches
    if not os.path.exists(path):
        raise InputError(f"ingest input {spec!r} does not exist (relative to {os.getcwd()})")
    return [path]


def _walk(directory: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        out.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith((".", "_")))
    return out


def _posix(p: str) -> str:
    return Path(p).as_posix()
