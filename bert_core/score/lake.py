"""Find the Parquet files of a lake and map each to a safe output path that mirrors it.

The input may be one file, a directory (searched recursively), a glob, or a
hive-partitioned lake (``dt=2024-01-01/part-0.parquet``). Each file keeps its path
relative to the input root, and the output mirrors that path, so partitioning is
preserved. Partition values are percent-decoded (as hive writers encode them), then
re-encoded with Spark's escape set before they become directory names: a value like
``../../etc`` or ``a/b`` can never climb out of, or add levels to, the output directory.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from bertflow.bert_core.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
HIVE_DEFAULT = "__HIVE_DEFAULT_PARTITION__"
_GLOB_CHARS = set("*?[")
# Spark's ExternalCatalogUtils.escapePathName set, plus backslash-free control chars and DEL.
_ESCAPE = set('"#%\'*/:=?\\{}[]^') | {chr(c) for c in range(0x20)} | {"\x7f"}
_MAX_COMPONENT_BYTES = 200


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, its path relative to the input root, its hive partition."""

    path: Path
    rel: PurePosixPath
    partition: tuple[tuple[str, str], ...]


def sanitize_partition_value(value: str) -> str:
    """Make a (decoded) partition key or value safe as one directory-name component.

    Characters Spark escapes (``/``, ``\\``, ``%``, ``:``, ``=``, quotes, control
    characters...) are percent-encoded, so hive readers decode the original value;
    ``.``/``..`` become ``%2E``/``%2E%2E``; an empty value becomes hive's default
    partition name. Over-long values are cut and suffixed with a hash.
    """
    if value == "":
        return HIVE_DEFAULT
    out = "".join(f"%{ord(ch):02X}" if ch in _ESCAPE else ch for ch in value)
    if set(out) == {"."}:
        out = "%2E" * len(out)
    if len(out.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        import hashlib

        digest = hashlib.sha256(out.encode("utf-8")).hexdigest()[:16]
        out = out.encode("utf-8")[: _MAX_COMPONENT_BYTES - 17].decode("utf-8", "ignore") + "-" + digest
    return out


def _safe_component(name: str) -> str:
    """A path component of the output: ``key=value`` parts sanitised separately, others whole."""
    if "=" in name:
        key, value = name.split("=", 1)
        return f"{sanitize_partition_value(unquote(key))}={sanitize_partition_value(unquote(value))}"
    return sanitize_partition_value(name)


def output_relpath(rel: PurePosixPath) -> PurePosixPath:
    """The output path (relative to the output dir) of an input's relative path."""
    parts = [_safe_component(p) for p in rel.parts[:-1]] + [sanitize_partition_value(rel.name)]
    return PurePosixPath(*parts)


def output_path(out_dir: Path, rel: PurePosixPath) -> Path:
    """``out_dir / output_relpath(rel)``, checked to lie inside ``out_dir``."""
    root = Path(out_dir).resolve()
    target = (root / output_relpath(rel)).resolve()
    if root != target and root not in target.parents:  # cannot happen after sanitising; a second guard
        raise InputError(f"input path {rel} would be written outside the output directory {root}")
    return target


def partition_of(rel: PurePosixPath) -> tuple[tuple[str, str], ...]:
    """Hive partition ``(key, value)`` pairs from the directory part of a relative path (decoded)."""
    pairs = []
    for part in rel.parts[:-1]:
        if "=" in part:
            key, value = part.split("=", 1)
            key, value = unquote(key), unquote(value)
            pairs.append((key, "" if value == HIVE_DEFAULT else value))
    return tuple(pairs)


def discover(spec: str, exclude: str | Path | None = None) -> tuple[Path, list[InputFile]]:
    """Resolve ``spec`` (file, directory, glob) to ``(root, files)``, sorted by relative path.

    Hidden files and directories (names starting with ``.`` or ``_``: temp files,
    ``_SUCCESS``, ``_delta_log``) are skipped, as are files under ``exclude``
    (the output directory, when it sits inside the input).
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    if any(ch in _GLOB_CHARS for ch in spec):
        root = _glob_root(spec)
        candidates = [Path(p) for p in glob.glob(spec, recursive=True)]
        candidates = [p for p in candidates if p.is_file()]
    else:
        path = Path(spec)
        if path.is_file():
            root, candidates = path.parent, [path]
        elif path.is_dir():
            root = path
            candidates = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES]
        else:
            raise InputError(f"score input {spec!r} does not exist (give a Parquet file, a directory or a glob)")
    root = root.resolve()
    files = []
    for cand in candidates:
        full = cand.resolve()
        if excluded is not None and (full == excluded or excluded in full.parents):
            continue
        try:
            rel = PurePosixPath(full.relative_to(root).as_posix())
        except ValueError:  # a symlink pointing outside the root: keep its name only
            rel = PurePosixPath(full.name)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        files.append(InputFile(path=full, rel=rel, partition=partition_of(rel)))
    if not files:
        raise InputError(f"no Parquet files found for score input {spec!r} "
                         f"(looked for {', '.join(PARQUET_SUFFIXES)}; hidden and _-prefixed names are skipped)")
    files.sort(key=lambda f: f.rel.as_posix())
    return root, files


def _glob_root(spec: str) -> Path:
    """The deepest directory of a glob before its first wildcard (relative paths mirror from there)."""
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(ch in _GLOB_CHARS for ch in part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(os.curdir)
