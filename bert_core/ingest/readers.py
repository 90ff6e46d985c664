"""Per-format readers: one input file -> batches of raw document strings.

Structured formats go through the libraries that already parse them well: DuckDB's
``read_json`` / ``read_csv`` (quoted newlines, gz/zstd, streamed with
``rel.to_arrow_reader``; one connection per file) and pyarrow's
``ParquetFile.iter_batches`` (one file at a time, so memory stays flat). Plain text is
decoded here (see :mod:`bert_core.ingest.decode`).

Any problem with a file's content raises :class:`FileRejected` with a reason a user can
act on; the stage lists the file as rejected (or fails, in strict mode).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.arrowtext import is_valid_utf8, raw_bytes
from bertflow.bert_core.ingest.decode import (
    StreamDecoder,
    Undecodable,
    check_not_binary,
    decode_bytes,
    decode_utf8_counted,
    detect_stream,
    open_binary,
    read_all,
)
from bertflow.bert_core.ingest.discover import InputFile
from bertflow.bert_core.stageio import disk_full_as_input_error

IN_MEMORY_TXT = 64 << 20  # blank-line .txt files up to this size (decompressed) are split in memory
MAX_DOCUMENT_FILE = 512 << 20  # a one-document .txt file bigger than this (decompressed) is rejected
MAX_RECORD_BYTES = 32 << 20  # largest JSON object / CSV line DuckDB will accept (also its CSV buffer size:
# left at its default, DuckDB sizes the buffer of a compressed CSV at 16x this and runs out of memory)
# a blank line between two line breaks of any convention: \n, \r\n, or a lone \r (classic Mac OS)
_BREAK = r"(?:\r\n|\r(?!\n)|\n)"
_BLANK_LINE = re.compile(_BREAK + r"[^\S\r\n]*" + _BREAK)
_DUCKDB_FORMATS = {"jsonl": "newline_delimited", "json": "auto"}


class FileRejected(Exception):
    """This input file cannot be used; ``str(exc)`` says why."""


@dataclass
class ReadStats:
    encoding: str | None = None  # text files: the encoding used
    replaced_bytes: int = 0  # undecodable bytes replaced by U+FFFD
    text_bytes: int = 0  # raw text read (decompressed bytes for .txt, UTF-8 bytes of the field otherwise)


Batch = list  # list[str | None]: one entry per raw document (None = missing value)


def iter_raw_documents(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    """Yield batches of raw documents of one file; raise FileRejected on unusable content."""
    if f.format is None:
        raise FileRejected("unsupported file type (expected .txt, .jsonl, .json, .csv, .tsv or .parquet, optionally .gz/.zst)")
    readers = {"txt": _read_txt, "jsonl": _read_json, "json": _read_json, "csv": _read_csv, "tsv": _read_csv, "parquet": _read_parquet}
    try:
        yield from readers[f.format](f, cfg, stats)
    except FileRejected:
        raise
    except Undecodable as exc:
        raise FileRejected(str(exc)) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise FileRejected(_compression_reason(f, exc)) from None
    except Exception as exc:  # library errors of a bad file: duckdb.Error, ArrowException, ZstdError
        if _is_library_error(exc):
            raise FileRejected(f"{type(exc).__name__}: {_first_line(exc)}") from None
        raise


def _is_library_error(exc: Exception) -> bool:
    import duckdb
    import pyarrow as pa

    if isinstance(exc, (duckdb.Error, pa.ArrowException, UnicodeError)):
        return True
    try:
        import zstandard

        return isinstance(exc, zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        return False


def _compression_reason(f: InputFile, exc: BaseException) -> str:
    what = {"gz": "gzip", "zst": "zstd"}.get(f.compression or "", "")
    if isinstance(exc, EOFError):
        return f"truncated {what or 'file'}: {exc}"
    if what:
        return f"corrupt {what} data: {type(exc).__name__}: {_first_line(exc)}"
    return f"cannot read: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    """The error's headline; for DuckDB's CSV errors ("CSV Error on Line: N") also the line that says why.

    The rest (the offending row's text, possible solutions, reader options) is left out: a reason
    stays one short line in the manifest.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "CSV Error on Line" in lines[0]:
        cause = next((line for line in lines[1:] if not line.startswith(("Original Line", "Possible Solution"))), None)
        if cause:
            return f"{lines[0]}: {cause}"
    return lines[0]


# ---------------------------------------------------------------- plain text


def _read_txt(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    if cfg.txt_mode == "file":
        data = read_all(f.path, f.compression, limit=MAX_DOCUMENT_FILE + 1)
        if len(data) > MAX_DOCUMENT_FILE:
            raise FileRejected(f"over {MAX_DOCUMENT_FILE >> 20} MiB of text as one document; use ingest.txt_mode=blank_line")
        check_not_binary(data[:65536], cfg.encoding)
        decoded = decode_bytes(data, cfg.encoding)
        stats.encoding, stats.replaced_bytes, stats.text_bytes = decoded.encoding, decoded.replaced_bytes, len(data)
        del data
        yield [decoded.text]
        return
    with open_binary(f.path, f.compression) as fh:
        head = fh.read(IN_MEMORY_TXT + 1)
    check_not_binary(head[:65536], cfg.encoding)
    if len(head) <= IN_MEMORY_TXT:
        decoded = decode_bytes(head, cfg.encoding)
        stats.encoding, stats.replaced_bytes, stats.text_bytes = decoded.encoding, decoded.replaced_bytes, len(head)
        del head
        yield [doc for doc in _BLANK_LINE.split(decoded.text) if doc.strip()]
        return
    del head
    yield from _stream_blank_line_docs(f, cfg, stats)


def _stream_blank_line_docs(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    """Big blank-line files: detect the encoding in one pass, then decode and split in a second."""

    def opener():
        return open_binary(f.path, f.compression)

    stats.encoding = cfg.encoding or detect_stream(opener)
    decoder = StreamDecoder(stats.encoding)
    rest = ""
    with opener() as fh:
        counted = _CountingReader(fh)
        for text in decoder.iter_text(counted):
            pieces = _BLANK_LINE.split(rest + text)
            rest = pieces.pop()
            docs = [p for p in pieces if p.strip()]
            if docs:
                yield docs
        stats.text_bytes = counted.n
    stats.replaced_bytes = decoder.replaced_bytes
    if rest.strip():
        yield [rest]


class _CountingReader:
    def __init__(self, fh) -> None:
        self._fh = fh
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        block = self._fh.read(size)
        self.n += len(block)
        return block


# ---------------------------------------------------------------- DuckDB: JSON, CSV


def quote_ident(name: str) -> str:
    """A SQL identifier for any column name: double-quoted, inner quotes doubled, NUL refused."""
    if not name or "\0" in name:
        raise ValueError(f"invalid column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def _duckdb(cfg: IngestConfig):
    """One connection per stream: an undrained Arrow reader blocks its connection."""
    import duckdb

    tmp = tempfile.mkdtemp(prefix="bertflow-duckdb-")
    con = duckdb.connect(
        config={
            "memory_limit": f"{cfg.duckdb_memory_mb}MB",
            "threads": cfg.duckdb_threads,
            "temp_directory": tmp,
            "preserve_insertion_order": True,
        }
    )
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _read_json(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    fmt = _DUCKDB_FORMATS[f.format or "jsonl"]
    with _duckdb(cfg) as con:
        described = con.sql(
            "DESCRIBE SELECT * FROM read_json(?, format = ?, maximum_object_size = ?)",
            params=[f.path, fmt, MAX_RECORD_BYTES],
        ).fetchall()
        fields = [row[0] for row in described]
        if fields == ["json"] and cfg.text_field != "json":  # DuckDB's one column for lines that are not all objects
            raise FileRejected(f"is not a file of JSON objects (one line or more is a bare value or array); "
                               f"each line must be an object with a {cfg.text_field!r} field")
        _require_column(cfg.text_field, fields, "field")
        # only the text field is read (bound as a parameter, never spliced into SQL); non-strings become their JSON text
        rel = con.sql(
            "SELECT * FROM read_json(?, format = ?, columns = ?, maximum_object_size = ?)",
            params=[f.path, fmt, {cfg.text_field: "VARCHAR"}, MAX_RECORD_BYTES],
        )
        yield from _drain(rel, cfg, stats)


def _read_csv(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    delim = "\t" if f.format == "tsv" else ","
    # quote/escape pinned to RFC 4180's '"' and comments off: left to the sniffer, DuckDB may pick "'" and
    # silently strip apostrophes from text ('quoted' -> quoted), may skip rows starting with '#' as comments,
    # and fails on a UTF-8 BOM before a quoted header
    source = ("read_csv(?, header = ?, all_varchar = true, delim = ?, quote = ?, escape = ?, comment = ?, "
              "max_line_size = ?, buffer_size = ?)")
    options = [delim, '"', '"', "", MAX_RECORD_BYTES, MAX_RECORD_BYTES]
    params = [f.path, True, *options]
    with _duckdb(cfg) as con:
        fields = con.sql(f"SELECT * FROM {source}", params=params).columns
        _require_column(cfg.text_field, fields, "column")
        # DuckDB renames a repeated header ('text', 'text' -> 'text', 'text_1'): reading one of them by name
        # would silently drop the other, so the header is read as it is written and a repeat is refused
        first = con.sql(f"SELECT * FROM {source} LIMIT 1", params=[f.path, False, *options]).fetchall()
        repeats = list(first[0]).count(cfg.text_field) if first else 0
        if repeats > 1:
            raise FileRejected(f"has {repeats} columns named {cfg.text_field!r} in its header; "
                               "rename them or set ingest.text_field")
        rel = con.sql(f"SELECT {quote_ident(cfg.text_field)} FROM {source}", params=params)
        yield from _drain(rel, cfg, stats)


def _drain(rel, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    import pyarrow.compute as pc

    reader = rel.to_arrow_reader(cfg.batch_rows)
    for batch in reader:
        column = batch.column(0)
        stats.text_bytes += int(pc.sum(pc.binary_length(column)).as_py() or 0)
        yield column.to_pylist()


def _require_column(name: str, available: list[str], what: str) -> None:
    if name not in available:
        shown = ", ".join(repr(a) for a in available[:20]) + (" ..." if len(available) > 20 else "")
        raise FileRejected(f"has no {what} {name!r} (found: {shown or 'none'}); set ingest.text_field")


# ---------------------------------------------------------------- Parquet


def _read_parquet(f: InputFile, cfg: IngestConfig, stats: ReadStats) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with _plain_copy(f) as path:
        with pq.ParquetFile(path) as pf:
            fields = pf.schema_arrow.names
            _require_column(cfg.text_field, fields, "column")
            if fields.count(cfg.text_field) > 1:  # pyarrow cannot pick one by name (a raw KeyError otherwise)
                raise FileRejected(f"has {fields.count(cfg.text_field)} columns named {cfg.text_field!r}; rename them")
            typ = pf.schema_arrow.field(cfg.text_field).type
            if not _is_text_type(typ):
                raise FileRejected(f"column {cfg.text_field!r} has type {typ}, expected a string column")
            for batch in pf.iter_batches(batch_size=cfg.batch_rows, columns=[cfg.text_field], use_threads=False):
                column = batch.column(0)
                if pa.types.is_dictionary(column.type):
                    column = column.dictionary_decode()
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    column = column.cast(pa.large_string())  # string_view: binary_length has no kernel for it
                stats.text_bytes += int(pc.sum(pc.binary_length(column)).as_py() or 0)
                yield _utf8_values(column, stats)


def _utf8_values(column, stats: ReadStats) -> list[str | None]:
    """A string column's values; bytes a broken writer left that are not UTF-8 become U+FFFD and are
    counted in ``replaced_bytes``, as in text files, instead of one bad cell refusing the whole file."""
    if is_valid_utf8(column):
        return column.to_pylist()
    values: list[str | None] = []
    for raw in raw_bytes(column):
        text, replaced = decode_utf8_counted(raw) if raw is not None else (None, 0)
        stats.replaced_bytes += replaced
        values.append(text)
    return values


def _is_text_type(typ) -> bool:
    """string, large_string, string_view, or a dictionary of one of those (pandas categoricals)."""
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    is_view = getattr(pa.types, "is_string_view", None)
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or bool(is_view and is_view(typ))


@contextmanager
def _plain_copy(f: InputFile):
    """Parquet needs random access: a ``.parquet.gz``/``.zst`` is decompressed to a temp file first."""
    if f.compression is None:
        yield f.path
        return
    fd, tmp = tempfile.mkstemp(prefix="bertflow-", suffix=".parquet")
    try:
        # a full temp disk is not a corrupt input: one clear error, not the file listed as rejected
        with disk_full_as_input_error(f"{tmp} (the decompressed copy of {f.path})"):
            with os.fdopen(fd, "wb") as out, open_binary(f.path, f.compression) as src:
                shutil.copyfileobj(src, out, 1 << 20)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)
