"""Which corpus documents train the vocabulary: hold-out and sampling caps.

Both choices are by ``doc_id`` (a content hash, so effectively random and fully
deterministic, independent of file order and sharding):

- **hold-out**: the ``k`` documents with the smallest ``doc_id``, where
  ``k = min(holdout_docs, floor(holdout_max_fraction * documents))``;
- **sampling** (``max_docs`` / ``max_bytes``): a document is kept when the last 8 hex
  digits of its ``doc_id`` fall below ``p * 16**8``, with ``p`` set from the corpus totals
  so that the expected sample meets the caps; the caps are then enforced exactly, in
  corpus order.

The corpus itself is read (and checked) by :mod:`bert_core.ingest.reader`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertflow.bert_core.ingest.reader import Corpus, CorpusShard, read_table
from bertflow.bert_core.vocab.config import VocabConfig


@dataclass
class Selection:
    """Which documents train the vocabulary and which are held out; filled in while iterating."""

    holdout_cutoff: str | None  # doc_ids <= this are held out (None: no hold-out)
    holdout_docs: int  # how many documents that is
    sample_threshold: str | None  # keep docs whose doc_id[24:32] < this (None: keep all)
    max_docs: int | None
    max_bytes: int | None
    holdout_eval_chars: int
    train_docs: int = 0
    train_bytes: int = 0
    holdout_texts: list[str] = field(default_factory=list)  # at most holdout_eval_chars of them
    holdout_seen: set[str] = field(default_factory=set)
    _holdout_chars: int = 0
    capped: bool = False

    @property
    def holdout_complete(self) -> bool:
        return self._holdout_chars >= self.holdout_eval_chars


def plan_selection(corpus: Corpus, cfg: VocabConfig) -> Selection:
    k = min(cfg.holdout_docs, math.floor(cfg.holdout_max_fraction * corpus.docs))
    cutoff = _kth_smallest_doc_id(corpus.shards, k) if k > 0 else None
    train_docs = max(corpus.docs - k, 1)
    train_bytes = corpus.text_bytes * train_docs / max(corpus.docs, 1) if corpus.text_bytes else 0
    p = 1.0
    if cfg.max_docs is not None:
        p = min(p, cfg.max_docs / train_docs)
    if cfg.max_bytes is not None and train_bytes:
        p = min(p, cfg.max_bytes / train_bytes)
    threshold = None if p >= 1.0 else format(max(1, math.ceil(p * 16**8)), "08x")
    return Selection(cutoff, k, threshold, cfg.max_docs, cfg.max_bytes, cfg.holdout_eval_chars)


def _kth_smallest_doc_id(shards: tuple[CorpusShard, ...], k: int) -> str:
    """The k-th smallest doc_id over all shards, reading only that column, shard by shard."""
    best: list[str] = []
    for shard in shards:
        ids = read_table(shard.path, ["doc_id"]).column("doc_id").combine_chunks()
        local = pc.take(ids, pc.array_sort_indices(ids)[:k]).to_pylist()
        best = sorted(best + local)[:k]
    return best[-1]


def iter_training_texts(corpus: Corpus, sel: Selection, batch_rows: int) -> Iterator[list[str]]:
    """Yield lists of training texts; set aside held-out texts in ``sel``; stop at the caps."""
    for batch in corpus.iter_batches(["doc_id", "text"], batch_rows):
        ids, texts = batch.column(0), batch.column(1)
        keep = None
        if sel.holdout_cutoff is not None:
            held = pc.less_equal(ids, sel.holdout_cutoff)
            _collect_holdout(sel, pc.filter(ids, held), pc.filter(texts, held))
            keep = pc.invert(held)
        if sel.sample_threshold is not None:
            sampled = pc.less(pc.utf8_slice_codeunits(ids, 24, 32), sel.sample_threshold)
            keep = sampled if keep is None else pc.and_(keep, sampled)
        if keep is not None:
            texts = pc.filter(texts, keep)
        texts = _apply_caps(sel, texts)
        if len(texts):
            yield texts.to_pylist()
        if sel.capped:
            return


def _collect_holdout(sel: Selection, ids: pa.Array, texts: pa.Array) -> None:
    if sel.holdout_complete or not len(ids):
        return
    for doc_id, text in zip(ids.to_pylist(), texts.to_pylist()):
        if sel.holdout_complete:
            break
        if doc_id in sel.holdout_seen:
            continue
        sel.holdout_seen.add(doc_id)
        piece = text[: sel.holdout_eval_chars - sel._holdout_chars]
        sel.holdout_texts.append(piece)
        sel._holdout_chars += len(piece)


def complete_holdout(corpus: Corpus, sel: Selection) -> None:
    """After a capped (early-stopped) training pass: find the rest of the held-out texts.

    Reads only the ``doc_id`` column, plus the text of row groups that hold a held-out document.
    """
    if sel.holdout_cutoff is None or sel.holdout_complete:
        return
    for shard in corpus.shards:
        for rg in range(shard.row_groups):
            ids = read_table(shard.path, ["doc_id"], [rg]).column(0)
            if not pc.any(pc.less_equal(ids, sel.holdout_cutoff)).as_py():
                continue
            table = read_table(shard.path, ["doc_id", "text"], [rg])
            held = pc.less_equal(table.column(0), sel.holdout_cutoff)
            _collect_holdout(sel, pc.filter(table.column(0), held), pc.filter(table.column(1), held))
            if sel.holdout_complete:
                return


def _apply_caps(sel: Selection, texts: pa.Array) -> pa.Array:
    n = len(texts)
    if sel.max_docs is not None and sel.train_docs + n >= sel.max_docs:
        n = sel.max_docs - sel.train_docs
        sel.capped = True
    sizes = pc.binary_length(texts[:n]).to_numpy(zero_copy_only=False).astype(np.int64)
    if sel.max_bytes is not None:
        total = sel.train_bytes + np.cumsum(sizes)
        fits = int(np.searchsorted(total, sel.max_bytes, side="right"))
        if fits < n:
            n = fits
            sel.capped = True
    sel.train_docs += n
    sel.train_bytes += int(sizes[:n].sum())
    return texts[:n]
