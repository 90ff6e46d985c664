"""Find the Parquet files of a lake, prune its partitions, and map each file to a safe output path that mirrors it.

The input may be one file, a directory (searched recursively), a glob, or a
hive-partitioned lake (``dt=2024-01-01/part-0.parquet``), on the local disk or in an
object store (``s3://bucket/lake/``). Each file keeps its path relative to the input
root, and the output mirrors that path, so partitioning is preserved. Partition values
are percent-decoded (as hive writers encode them), then re-encoded with Spark's escape
set before they become directory names: a value like ``../../etc`` or ``a/b`` can never
climb out of, or add levels to, the output directory.

Partition pruning is pyarrow.dataset's: the files become a ``FileSystemDataset`` whose
fragments carry their typed partition values, and ``get_fragments(filter=...)`` drops
those whose path rules out every row, without opening them.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pyarrow as pa

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.storage import Location, expand, locate

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
HIVE_DEFAULT = "__HIVE_DEFAULT_PARTITION__"
_GLOB_CHARS = set("*?[")
# Spark's ExternalCatalogUtils.escapePathName set, plus backslash-free control chars and DEL.
_ESCAPE = set('"#%\'*/:=?\\{}[]^') | {chr(c) for c in range(0x20)} | {"\x7f"}
_MAX_COMPONENT_BYTES = 200


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, its path relative to the input root, its hive partition."""

    uri: str  # what jobs and manifests name: the absolute local path, or s3://bucket/key
    path: str  # the filesystem's path of it (bucket/key on S3)
    rel: PurePosixPath
    partition: tuple[tuple[str, str], ...]
    size: int | None = None  # bytes, from the listing (None: not listed with sizes)


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


def output_path(out: Location | str | Path, rel: PurePosixPath) -> Location:
    """The output file of an input's relative path: ``out / output_relpath(rel)``, checked to lie inside ``out``."""
    root = out if isinstance(out, Location) else locate(out)
    target = root.child(output_relpath(rel).as_posix())
    if not root.remote:
        resolved = Path(target.path).resolve()
        if Path(root.path) != resolved and Path(root.path) not in resolved.parents:  # a second guard
            raise InputError(f"input path {rel} would be written outside the output directory {root.uri}")
        target = locate(resolved)
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


def discover(spec: str, exclude: Location | str | Path | None = None) -> tuple[Location, list[InputFile]]:
    """Resolve ``spec`` (file, directory, glob; local or ``s3://``) to ``(root, files)``, sorted by relative path.

    Hidden files and directories (names starting with ``.`` or ``_``: temp files,
    ``_SUCCESS``, ``_delta_log``) are skipped, as are files under ``exclude``
    (the output directory, when it sits inside the input).
    """
    loc = locate(spec)
    excluded = exclude if isinstance(exclude, Location) or exclude is None else locate(exclude)
    found = _list_local(spec) if not loc.remote else _list_remote(spec, loc)
    root, candidates = found
    files = []
    for path, size in candidates:
        if excluded is not None and (path == excluded.path or path.startswith(excluded.path.rstrip("/") + "/")):
            continue
        rel = PurePosixPath(root.rel_of(path)) if path.startswith(root.path.rstrip("/") + "/") \
            else PurePosixPath(PurePosixPath(path).name)  # a symlink pointing outside the root: its name only
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        files.append(InputFile(uri=root.uri_of(path) if root.remote else path, path=path, rel=rel,
                               partition=partition_of(rel), size=size))
    if not files:
        raise InputError(f"no Parquet files found for score input {spec!r} "
                         f"(looked for {', '.join(PARQUET_SUFFIXES)}; hidden and _-prefixed names are skipped)")
    files.sort(key=lambda f: f.rel.as_posix())
    return root, files


def _list_local(spec: str) -> tuple[Location, list[tuple[str, int | None]]]:
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
    return locate(root), [(cand.resolve().as_posix(), None) for cand in candidates]


def _list_remote(spec: str, loc: Location) -> tuple[Location, list[tuple[str, int | None]]]:
    """One listing of the bucket prefix (a glob filters it); in a folder only Parquet names count."""
    root, infos, folder = expand(loc)
    if folder and not any(ch in _GLOB_CHARS for ch in loc.path):
        infos = [i for i in infos if PurePosixPath(i.path).suffix.lower() in PARQUET_SUFFIXES]
    return root, [(i.path, i.size) for i in infos]


def _glob_root(spec: str) -> Path:
    """The deepest directory of a glob before its first wildcard (relative paths mirror from there)."""
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(ch in _GLOB_CHARS for ch in part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(os.curdir)


# ------------------------------------------------------------------------------------------ partitions
_INT = re.compile(r"^-?\d{1,18}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PARTITION_TYPES = {"int64": pa.int64(), "date32": pa.date32(), "string": pa.string()}


def partition_types(files: list[InputFile]) -> dict[str, str]:
    """The type of each hive key over the whole lake, as hive and DuckDB infer it: int64 when every value
    is an integer, date32 when every value is a ``YYYY-MM-DD`` date, else string (nulls do not count)."""
    values: dict[str, list[str]] = {}
    for f in files:
        for key, value in f.partition:
            values.setdefault(key, [])
            if value != "":
                values[key].append(value)
    return {key: _infer(vals) for key, vals in values.items()}


def _infer(values: list[str]) -> str:
    if values and all(_INT.match(v) for v in values):
        return "int64"
    if values and all(_DATE.match(v) and _is_date(v) for v in values):
        return "date32"
    return "string"


def _is_date(value: str) -> bool:
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def typed_partition(partition: tuple[tuple[str, str], ...], types: dict[str, str]) -> dict[str, pa.Scalar]:
    """A file's partition values as scalars of the lake's partition types (``""``: null, hive's default)."""
    out = {}
    for key, value in partition:
        typ = PARTITION_TYPES[types.get(key, "string")]
        out[key] = pa.scalar(None, typ) if value == "" else pa.scalar(value).cast(typ)
    return out


def prune(root: Location, files: list[InputFile], where, types: dict[str, str]) -> tuple[list[InputFile],
                                                                                        list[InputFile]]:
    """``(kept, pruned)``: the files whose partition path leaves some row able to match ``where``.

    Done by pyarrow.dataset without opening any file: each fragment carries its partition
    as an expression, predicates on data columns stand as unknowns, and
    ``get_fragments(filter=...)`` keeps the fragments the condition cannot rule out.
    """
    import pyarrow.dataset as ds

    from bertflow.bert_core.score.where import UNKNOWN, Field, to_expression

    if where is None or not types:
        return files, []
    schema_of = {key: PARTITION_TYPES[t] for key, t in types.items()}
    lowered = {k.lower(): k for k in schema_of}

    def resolve(name: str):
        key = name if name in schema_of else lowered.get(name.lower())
        return Field(key, schema_of[key]) if key is not None else UNKNOWN

    expression, unknowns = to_expression(where, resolve, f"the partitions of {root.uri}")
    if len(unknowns) and not any(resolve(c) is not UNKNOWN for c in where.columns):
        return files, []  # no partition key in the condition: nothing to prune by path
    schema = pa.schema([pa.field(k, t) for k, t in schema_of.items()] + unknowns)
    guarantees = [_partition_expression(typed_partition(f.partition, types)) for f in files]
    dataset = ds.FileSystemDataset.from_paths([f.path for f in files], schema=schema, format=ds.ParquetFileFormat(),
                                              filesystem=root.fs, partitions=guarantees)
    kept_paths = {frag.path for frag in dataset.get_fragments(filter=expression)}
    return [f for f in files if f.path in kept_paths], [f for f in files if f.path not in kept_paths]


def _partition_expression(values: dict[str, pa.Scalar]):
    import pyarrow.dataset as ds

    expression = ds.scalar(True)
    for key, value in values.items():
        expression = expression & (ds.field(key).is_null() if not value.is_valid else ds.field(key) == value)
    return expression
