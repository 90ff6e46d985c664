"""Expand ``ingest.inputs`` (files, directories, globs) into a sorted, de-duplicated file list.

Rules:
- a path or glob that matches nothing is an :class:`InputError` naming it;
- directories are walked recursively (hive-partitioned Parquet dirs included); inside them
  only files with a known extension are taken, hidden and ``_``-prefixed files (``_SUCCESS``,
  ``.crc``) are skipped silently, other files are listed as ``skipped``;
- a file named explicitly (or matched by a glob) with an unknown extension is kept with
  format ``None`` so the stage reports it as rejected;
- the same file reached twice is read once;
- an object-store input (``s3://bucket/corpus/``, a glob of keys, one object) follows the
  same rules; its files are listed here and copied to a local folder by :func:`local_copies`
  before reading (the readers, DuckDB's among them, read local files), while the corpus
  and the manifest name them by their URI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import disk_full_as_input_error
from bertflow.bert_core.storage import expand, is_remote, locate

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
    source: str | None = None  # the object-store URI it came from (then ``path`` is its local copy)

    @property
    def name(self) -> str:
        """What the corpus and the manifest call the file: its URI, or its path."""
        return self.source or self.path


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
        if is_remote(spec):
            _add_remote(spec, files, skipped, seen)
            continue
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


def _add_remote(spec: str, files: list[InputFile], skipped: list[str], seen: set[str]) -> None:
    """List an object-store input by the local rules; its files keep their URI as ``path`` until copied."""
    root, infos, folder = expand(locate(spec))
    globbed = any(ch in "*?[" for ch in spec)
    if not infos:
        raise InputError(f"ingest input {spec!r}: "
                         + ("the glob matches no objects" if globbed else "no objects there"))
    for info in infos:
        rel = root.rel_of(info.path)
        if folder and not globbed and any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        uri = root.uri_of(info.path)
        fmt, comp = classify(info.path)
        if fmt is None and folder and not globbed:
            skipped.append(uri)
            continue
        if uri not in seen:
            seen.add(uri)
            files.append(InputFile(uri, fmt, comp, int(info.size or 0), source=uri))


@contextlib.contextmanager
def local_copies(files: list[InputFile]) -> Iterator[list[InputFile]]:
    """``files`` with every object-store file copied into a temporary local folder (removed afterwards)."""
    if not any(f.source for f in files):
        yield files
        return
    with tempfile.TemporaryDirectory(prefix="bertflow-ingest-objects-") as tmp:
        copied = []
        for i, f in enumerate(files):
            if f.source is None:
                copied.append(f)
                continue
            local = Path(tmp) / f"{i:06d}" / posixpath.basename(f.source)  # the name keeps format and compression
            local.parent.mkdir()
            loc = locate(f.source)
            with disk_full_as_input_error(f"{local} (the local copy of {f.source})"):
                with loc.fs.open_input_stream(loc.path) as src, open(local, "wb") as out:
                    while block := src.read(8 << 20):
                        out.write(block)
            copied.append(dataclasses.replace(f, path=local.as_posix(), size=local.stat().st_size))
        yield copied


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
