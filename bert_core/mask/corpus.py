"""Read the corpus (ingestion's output) as work units of whole documents.

A *work unit* is a run of consecutive documents of one corpus shard holding about
``unit_mb`` of text. Units are cut from the data alone (per-document character counts),
so they, and everything generated from them, do not depend on the number of workers.
Each unit is read with ``ParquetFile.iter_batches`` over just its row groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.schema import SHARD_GLOB
from bertflow.bert_core.stageio import read_manifest

REQUIRED_COLUMNS = {"doc_id": pa.string(), "text": pa.string(), "n_chars": pa.int32(),
                    "sent_starts": pa.list_(pa.int32())}


@dataclass(frozen=True)
class CorpusShard:
    index: int
    path: str
    rows: int


@dataclass(frozen=True)
class Corpus:
    directory: str
    fingerprint: str
    shards: tuple[CorpusShard, ...]


@dataclass(frozen=True)
class WorkUnit:
    """Rows ``[row_start, row_end)`` of corpus shard ``shard``; ``index`` is its global position."""

    index: int
    shard: int
    path: str
    row_start: int
    row_end: int
    chars: int


@dataclass
class UnitDocs:
    """A unit's documents: texts and sentence starts (character offsets, int64)."""

    doc_ids: list[str]
    texts: list[str]
    sent_starts: list[np.ndarray]


def open_corpus(directory: str | Path) -> Corpus:
    """Check a corpus dir (manifest, shards, columns) and list its shards in order."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"corpus directory {d} does not exist (run the ingest stage first)")
    manifest = read_manifest(d, "ingest")
    fingerprint = manifest.get("corpus_fingerprint")
    if not fingerprint:
        raise InputError(f"{d}/manifest.json has no corpus_fingerprint: {d} is not a corpus "
                         "(point mask at the ingest stage's output directory)")
    names = _shard_names(manifest, d)
    if not names:
        raise InputError(f"corpus {d} has no {SHARD_GLOB} shards (re-run the ingest stage)")
    shards = []
    for i, name in enumerate(names):
        path = d / name
        if not path.is_file():
            raise InputError(f"corpus shard {path} is listed in {d}/manifest.json but missing "
                             "(re-run the ingest stage)")
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"corpus shard {path} is not a readable Parquet file: {exc}") from None
        schema = pf.schema_arrow
        for col, typ in REQUIRED_COLUMNS.items():
            idx = schema.get_field_index(col)
            if idx < 0:
                raise InputError(f"corpus shard {path} has no {col!r} column: not a corpus shard "
                                 "(see bert_core/ingest/schema.py)")
            found = schema.field(idx).type
            if not _compatible(found, typ):
                raise InputError(f"corpus shard {path}: column {col!r} is {found}, expected {typ}")
        shards.append(CorpusShard(i, str(path), pf.metadata.num_rows))
    return Corpus(str(d), str(fingerprint), tuple(shards))


def plan_units(corpus: Corpus, unit_mb: float) -> list[WorkUnit]:
    """Cut every shard into units of whole documents, each about ``unit_mb`` MB of text.

    A unit closes once it holds ``unit_mb`` of characters; a last unit of a shard smaller
    than half of that joins the one before (so NSP always has other documents to draw from).
    """
    target = max(1, int(unit_mb * 1e6))
    units: list[WorkUnit] = []
    for shard in corpus.shards:
        if shard.rows == 0:
            continue
        n_chars = pq.read_table(shard.path, columns=["n_chars"]).column("n_chars").to_numpy().astype(np.int64)
        bounds = [0]
        acc = 0
        for i, n in enumerate(n_chars.tolist()):
            acc += n
            if acc >= target and i + 1 < len(n_chars):
                bounds.append(i + 1)
                acc = 0
        bounds.append(len(n_chars))
        if len(bounds) > 2 and n_chars[bounds[-2]:].sum() < target / 2:
            del bounds[-2]
        csum = np.concatenate([[0], np.cumsum(n_chars)])
        for a, b in zip(bounds[:-1], bounds[1:]):
            units.append(WorkUnit(len(units), shard.index, shard.path, a, b, int(csum[b] - csum[a])))
    return units


def read_unit(unit: WorkUnit) -> UnitDocs:
    """Load a unit's documents (only the row groups that hold them)."""
    pf = pq.ParquetFile(unit.path)
    md = pf.metadata
    row_groups, first_row, row = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if row + n > unit.row_start and row < unit.row_end:
            row_groups.append(g)
            if first_row is None:
                first_row = row
        row += n
    doc_ids: list[str] = []
    texts: list[str] = []
    starts: list[np.ndarray] = []
    pos = first_row or 0
    for batch in pf.iter_batches(batch_size=4096, row_groups=row_groups, columns=["doc_id", "text", "sent_starts"]):
        lo, hi = max(unit.row_start - pos, 0), min(unit.row_end - pos, batch.num_rows)
        pos += batch.num_rows
        if hi <= lo:
            continue
        batch = batch.slice(lo, hi - lo)
        doc_ids.extend(batch.column("doc_id").to_pylist())
        batch_texts = batch.column("text").to_pylist()
        texts.extend(batch_texts)
        starts.extend(_sentence_starts(batch.column("sent_starts"), batch_texts, unit, doc_ids[-len(batch_texts):]))
    return UnitDocs(doc_ids, texts, starts)


def _sentence_starts(col: pa.ListArray, texts: list[str], unit: WorkUnit, doc_ids: list[str]) -> list[np.ndarray]:
    """Per-document int64 arrays; bad offsets are an InputError naming the document."""
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = np.asarray(col.values, dtype=np.int64)
    out = []
    for i, text in enumerate(texts):
        s = values[offsets[i]:offsets[i + 1]]
        if s.size == 0:
            s = np.zeros(1 if text else 0, dtype=np.int64)
        elif s[0] != 0 or (s.size > 1 and (np.diff(s) <= 0).any()) or s[-1] >= max(len(text), 1):
            raise InputError(f"corpus shard {unit.path}, document {doc_ids[i]}: sent_starts must start at 0, "
                             f"increase and stay below len(text) ({len(text)}); re-run the ingest stage")
        out.append(s)
    return out


def _shard_names(manifest: dict, d: Path) -> list[str]:
    listed = manifest.get("shards")
    if isinstance(listed, list) and listed:
        names = []
        for entry in listed:
            name = entry.get("file") or entry.get("name") or entry.get("path") if isinstance(entry, dict) else entry
            if isinstance(name, str):
                names.append(name)
            else:
                raise InputError(f"{d}/manifest.json: cannot read shard entry {entry!r}")
        return names
    return sorted(p.name for p in d.glob(SHARD_GLOB))


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    if found == expected:
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_list(expected):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and pa.types.is_integer(found.value_type)
    return False
