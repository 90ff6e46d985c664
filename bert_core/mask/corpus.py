"""The corpus (ingestion's output) cut into work units of whole documents.

A *work unit* is a run of consecutive documents of one corpus shard holding about
``unit_mb`` of text. Units are cut from the data alone (per-document character counts),
so they, and everything generated from them, do not depend on the number of workers.
The corpus is checked and read by :mod:`bert_core.ingest.reader`; a unit reads just the
row groups that hold its documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertflow.bert_core.ingest.reader import Corpus, iter_rows, read_table, sentence_starts


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
        n_chars = read_table(shard.path, ["n_chars"]).column(0).to_numpy().astype(np.int64)
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
            units.append(WorkUnit(len(units), shard.index, str(shard.path), a, b, int(csum[b] - csum[a])))
    return units


def read_unit(unit: WorkUnit) -> UnitDocs:
    """Load a unit's documents, with their sentence starts checked."""
    docs = UnitDocs([], [], [])
    for batch in iter_rows(unit.path, unit.row_start, unit.row_end, ["doc_id", "text", "sent_starts"]):
        ids, texts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        docs.doc_ids.extend(ids)
        docs.texts.extend(texts)
        docs.sent_starts.extend(sentence_starts(batch.column(2), texts, ids, unit.path))
    return docs
