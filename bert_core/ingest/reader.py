"""Reading a corpus directory, the ingest stage's output (writer: ``shards.py``; format: ``schema.py``).

Corpora of ready text that skip the stage's cleaning are written by ``documents.py``, through the same writer.

Vocabulary training and masked-data generation both read corpora through this module.
:func:`open_corpus` checks the whole directory up front (manifest, then every listed
shard's footer and schema), so a bad corpus fails before any work, with an
:class:`InputError` naming the file. Reading then goes one shard at a time with
``ParquetFile.iter_batches`` (pyarrow dataset scanners can accumulate memory,
apache/arrow#39808), so memory stays at about a batch.

Not to be confused with ``readers.py``: the input-file readers that ingestion reads from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.stageio import MANIFEST, read_manifest

_RERUN = "(re-run the ingest stage)"


@dataclass(frozen=True)
class CorpusShard:
    """One shard file: its position in the manifest, row count and row-group count (from its footer)."""

    index: int
    path: Path
    rows: int
    row_groups: int


@dataclass(frozen=True)
class Corpus:
    """A checked corpus directory; ``shards`` in the manifest's order (the corpus order)."""

    path: Path
    shards: tuple[CorpusShard, ...]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """The ingest stage's content fingerprint (ordered doc ids, schema, splitter version)."""
        return str(self.manifest["corpus_fingerprint"])

    @property
    def docs(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def text_bytes(self) -> int:
        """UTF-8 bytes of text in the corpus, as the manifest counts it (0 when it does not)."""
        return int(self.manifest.get("counts", {}).get("text_bytes_out") or 0)

    def iter_batches(self, columns: Sequence[str], batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
        """Every row, in corpus order, as record batches of ``columns``."""
        for shard in self.shards:
            yield from iter_batches(shard.path, columns, batch_rows)


def open_corpus(directory: str | Path) -> Corpus:
    """Check that ``directory`` is a complete, readable corpus and list its shards."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"corpus directory {d} does not exist (run the ingest stage first)")
    manifest = read_manifest(d, "ingest")
    if manifest.get("stage") != "ingest":
        raise InputError(f"{d} is not an ingest output (its {MANIFEST} says stage={manifest.get('stage')!r}); "
                         "point at the ingest stage's output directory")
    if not manifest.get("corpus_fingerprint"):
        raise InputError(f"{d / MANIFEST} has no corpus_fingerprint: {d} is not a corpus {_RERUN}")
    listed = manifest.get("shards")
    if not isinstance(listed, list) or not listed:
        raise InputError(f"{d / MANIFEST} lists no shards {_RERUN}")
    shards = tuple(_check_shard(d, i, entry) for i, entry in enumerate(listed))
    return Corpus(d, shards, manifest)


def _check_shard(d: Path, index: int, entry: Any) -> CorpusShard:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise InputError(f"{d / MANIFEST}: cannot read shard entry {entry!r} {_RERUN}")
    path = d / name
    if not path.is_file():
        raise InputError(f"corpus shard {path} is listed in {d / MANIFEST} but missing {_RERUN}")
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"corpus shard {path} is not a readable Parquet file: {exc} {_RERUN}") from None
    if "rows" in entry and entry["rows"] != meta.num_rows:
        raise InputError(f"corpus shard {path} holds {meta.num_rows} rows but {d / MANIFEST} says {entry['rows']} "
                         f"{_RERUN}")
    _check_schema(path, meta.schema.to_arrow_schema())
    return CorpusShard(index, path, meta.num_rows, meta.num_row_groups)


def _check_schema(path: Path, schema: pa.Schema) -> None:
    for expected in CORPUS_SCHEMA:
        i = schema.get_field_index(expected.name)
        if i < 0:
            raise InputError(f"corpus shard {path} has no {expected.name!r} column: not a corpus shard "
                             "(see bert_core/ingest/schema.py)")
        if schema.field(i).type != expected.type:
            raise InputError(f"corpus shard {path}: column {expected.name!r} is {schema.field(i).type}, "
                             f"expected {expected.type} (see bert_core/ingest/schema.py)")
    extra = [n for n in schema.names if n not in CORPUS_SCHEMA.names]
    if extra:
        raise InputError(f"corpus shard {path} has columns {extra} that the corpus format does not have "
                         "(see bert_core/ingest/schema.py)")


@contextlib.contextmanager
def _reading(path: str | Path) -> Iterator[None]:
    """A shard cut or deleted after :func:`open_corpus` checked it: an InputError naming it, not an Arrow trace."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"corpus shard {path} cannot be read: {exc} {_RERUN}") from None


def iter_batches(path: str | Path, columns: Sequence[str], batch_rows: int = 4096,
                 row_groups: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` from one shard (all its row groups, or just ``row_groups``)."""
    with _reading(path), pq.ParquetFile(path) as pf:
        yield from pf.iter_batches(batch_size=batch_rows, row_groups=row_groups, columns=list(columns),
                                   use_threads=False)


def iter_rows(path: str | Path, start: int, end: int, columns: Sequence[str],
              batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    """Rows ``[start, end)`` of one shard; only the row groups that hold them are read."""
    with _reading(path):
        meta = pq.read_metadata(path)
    groups, first, row = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row + n > start and row < end:
            groups.append(g)
            first = row if first is None else first
        row += n
    if not groups:
        return
    pos = first
    for batch in iter_batches(path, columns, batch_rows, groups):
        lo, hi = max(start - pos, 0), min(end - pos, batch.num_rows)
        pos += batch.num_rows
        if hi > lo:
            yield batch.slice(lo, hi - lo)


def read_table(path: str | Path, columns: Sequence[str], row_groups: Sequence[int] | None = None) -> pa.Table:
    """Whole columns of one shard, or of some of its row groups: for small reads (ids, lengths), not texts."""
    with _reading(path), pq.ParquetFile(path) as pf:
        if row_groups is None:
            return pf.read(columns=list(columns), use_threads=False)
        return pf.read_row_groups(row_groups, columns=list(columns), use_threads=False)


def sentence_starts(col: pa.ListArray, texts: list[str], doc_ids: list[str], path: str | Path) -> list[np.ndarray]:
    """A batch's ``sent_starts`` as int64 arrays, checked against the format; ``[0]`` for a text without any.

    Offsets that do not start at 0, increase and stay below ``len(text)`` are an InputError naming
    the document.
    """
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = np.asarray(col.values, dtype=np.int64)
    out = []
    for i, text in enumerate(texts):
        s = values[offsets[i]:offsets[i + 1]]
        if s.size == 0:
            s = np.zeros(1 if text else 0, dtype=np.int64)
        elif s[0] != 0 or (s.size > 1 and (np.diff(s) <= 0).any()) or s[-1] >= max(len(text), 1):
            raise InputError(f"corpus shard {path}, document {doc_ids[i]}: sent_starts must start at 0, "
                             f"increase and stay below len(text) ({len(text)}); re-run the ingest stage")
        out.append(s)
    return out
