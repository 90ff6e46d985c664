"""One work unit, start to finish, in a worker process: read, tokenize, build rows, mask, shuffle, write.

Everything random is drawn from generators seeded by ``(seed, corpus shard, unit,
dupe)``, so a unit's output does not depend on which process makes it or when. A unit's
``dupe_factor`` copies are made one after the other from the same tokens (the tokens are
held once; only one copy's rows are in memory at a time).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.mask.corpus import WorkUnit, read_unit
from bertflow.bert_core.mask.encode import DocumentEncoder, EncodedDocs
from bertflow.bert_core.mask.masking import apply_masks, select_positions
from bertflow.bert_core.mask.memory import release_freed_memory
from bertflow.bert_core.mask.nsp import nsp_pairs
from bertflow.bert_core.mask.packing import pack_full
from bertflow.bert_core.mask.schema import shard_schema
from bertflow.bert_core.mask.sequences import Ragged, Sequences, ranges_to_indices
from bertflow.bert_core.mask.tokenizer import TokenizerInfo, load_tokenizer, word_starts_of

MASK_CHUNK_ROWS = 8192  # rows masked per call: bounds the temporaries (the chunking is part of the RNG stream)


@dataclass(frozen=True)
class UnitJob:
    unit: WorkUnit
    cfg: MaskConfig
    tokenizer_dir: str
    parts_dir: str


@dataclass
class UnitResult:
    unit: int
    parts: list[tuple[str, int]] = field(default_factory=list)  # (file, rows), one per dupe
    docs: int = 0
    docs_skipped_short: int = 0  # fewer than 2 tokens
    docs_skipped_sentences: int = 0  # nsp: fewer than 2 non-empty sentences
    source_tokens: int = 0  # tokens of the kept documents, once
    unk_tokens: int = 0
    sequences: int = 0
    tokens: int = 0
    masked_tokens: int = 0
    random_next: int = 0
    forced_true_next: int = 0
    truncated_pairs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per step in the worker

    def timed(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - since
        return now


@dataclass(frozen=True)
class _Tools:
    """What a worker process loads once and reuses for every unit."""

    tokenizer: object
    info: TokenizerInfo
    encoder: DocumentEncoder
    special_table: np.ndarray  # bool [vocab]: never masked
    word_start_table: np.ndarray  # bool [vocab]: False at ## pieces


@dataclass
class _NspDocuments:
    """The non-empty sentences of the documents NSP can use (>= 2 of them), as token spans."""

    sent_start: np.ndarray
    sent_end: np.ndarray
    doc_first: np.ndarray
    doc_count: np.ndarray


_TOOLS: dict[str, _Tools] = {}


def _tools(tokenizer_dir: str) -> _Tools:
    if tokenizer_dir not in _TOOLS:
        tokenizer, info = load_tokenizer(tokenizer_dir)
        _TOOLS.clear()
        _TOOLS[tokenizer_dir] = _Tools(tokenizer, info, DocumentEncoder(tokenizer, info), info.special_table(),
                                       word_starts_of(tokenizer, info))
    return _TOOLS[tokenizer_dir]


def process_unit(job: UnitJob) -> UnitResult:
    """Make and write the unit's parts (one per dupe); return its counts."""
    cfg, unit, tools = job.cfg, job.unit, _tools(job.tokenizer_dir)
    result = UnitResult(unit=unit.index)
    t = time.perf_counter()
    docs = read_unit(unit)
    result.docs = len(docs.texts)
    t = result.timed("read", t)
    needs_sentences = cfg.recipe == "nsp" or cfg.full_packing == "sentences"
    enc = tools.encoder.encode(docs.texts, docs.sent_starts if needs_sentences else None)
    del docs
    release_freed_memory()  # the tokenizer's threads free a lot that the allocator would otherwise keep
    t = result.timed("tokenize", t)
    keep, nsp_docs = _usable_documents(enc, cfg, result, tools.info)
    rows = None
    for dupe in range(cfg.dupe_factor):
        build_seed, mask_seed, shuffle_seed = np.random.SeedSequence([cfg.seed, unit.shard, unit.index, dupe]).spawn(3)
        if nsp_docs is not None:  # new pairs for every dupe, as in Google's script
            rows = _nsp_rows(enc, nsp_docs, cfg, build_seed, tools.info, result)
        elif rows is None:  # packing is deterministic: one set of rows, masked afresh per dupe
            sp = tools.info.special_ids
            rows = pack_full(enc, keep, cfg.max_seq_length, sp["cls"], sp["sep"],
                             cross_documents=cfg.full_mode == "full_sentences",
                             by_sentences=cfg.full_packing == "sentences")
        t = result.timed("build", t)
        if len(rows) == 0:
            continue
        masked = None
        if cfg.masking == "static":
            masked = _mask_static(rows.input_ids, cfg, np.random.default_rng(mask_seed), tools)
            result.masked_tokens += len(masked[1].values)
        t = result.timed("mask", t)
        order = np.random.default_rng(shuffle_seed).permutation(len(rows))
        name = f"part-{unit.index:06d}-{dupe:04d}.arrow"
        _write_part(Path(job.parts_dir) / name, _to_table(rows, masked, order, tools.info.id_type, cfg))
        del masked
        release_freed_memory()
        t = result.timed("write", t)
        result.parts.append((name, len(rows)))
        result.sequences += len(rows)
        result.tokens += len(rows.input_ids.values)
    return result


def _usable_documents(enc: EncodedDocs, cfg: MaskConfig, result: UnitResult,
                      info: TokenizerInfo) -> tuple[np.ndarray, _NspDocuments | None]:
    """Documents with >= 2 tokens (nsp: >= 2 non-empty sentences); the skips are counted."""
    keep = enc.doc_lengths >= 2
    result.docs_skipped_short = int((~keep).sum())
    nsp_docs = None
    if cfg.recipe == "nsp":
        nonempty = enc.sent_ends > enc.sent_starts
        doc_of_sent = np.repeat(np.arange(len(keep)), np.diff(enc.doc_sent_offsets))
        per_doc = np.bincount(doc_of_sent[nonempty], minlength=len(keep))
        result.docs_skipped_sentences = int((keep & (per_doc < 2)).sum())
        keep = keep & (per_doc >= 2)
        chosen = nonempty & keep[doc_of_sent]
        counts = per_doc[keep].astype(np.int64)
        nsp_docs = _NspDocuments(enc.sent_starts[chosen], enc.sent_ends[chosen], np.cumsum(counts) - counts, counts)
    docs = np.flatnonzero(keep)
    kept = enc.ids if docs.size == len(keep) else enc.ids[ranges_to_indices(enc.doc_offsets[docs],
                                                                             enc.doc_lengths[docs])]
    result.source_tokens = int(kept.size)
    result.unk_tokens = int(np.count_nonzero(kept == info.special_ids["unk"]))
    return keep, nsp_docs


def _nsp_rows(enc: EncodedDocs, docs: _NspDocuments, cfg: MaskConfig, seed: np.random.SeedSequence,
              info: TokenizerInfo, result: UnitResult) -> Sequences:
    rng = random.Random(int(seed.generate_state(2, np.uint64)[0]))
    rows, stats = nsp_pairs(enc.ids, docs.sent_start, docs.sent_end, docs.doc_first, docs.doc_count,
                            cfg.max_seq_length, cfg.short_seq_prob, rng, info.special_ids["cls"],
                            info.special_ids["sep"])
    result.random_next += stats.random_next
    result.forced_true_next += stats.forced_true_next
    result.truncated_pairs += stats.truncated
    return rows


def _write_part(path: Path, table: pa.Table) -> None:
    """An uncompressed Arrow IPC file: the shard writers memory-map it."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _mask_static(input_ids: Ragged, cfg: MaskConfig, rng: np.random.Generator,
                 tools: _Tools) -> tuple[Ragged, Ragged, Ragged]:
    """Masked ids, masked positions and the original ids there, chunk by chunk (the shared masking)."""
    info = tools.info
    word_start_table = tools.word_start_table if cfg.whole_word else None
    masked_parts, pos_parts, orig_parts = [], [], []
    specials = np.asarray(sorted(info.special_ids.values()), dtype=np.int64)
    pad, width = info.special_ids["pad"], cfg.max_seq_length
    for a in range(0, len(input_ids), MASK_CHUNK_ROWS):
        chunk = input_ids.slice(a, min(a + MASK_CHUNK_ROWS, len(input_ids)))
        padded = chunk.to_padded(width, pad)
        special = tools.special_table[padded]
        starts = None if word_start_table is None else word_start_table[padded]
        selected = select_positions(padded.shape, special, starts, rng, cfg.masked_lm_prob,
                                    cfg.max_predictions_per_seq)
        out, labels = apply_masks(padded, selected, rng, vocab_size=info.vocab_size, specials=specials,
                                  mask_id=info.special_ids["mask"])
        masked_parts.append(Ragged.from_padded(out, chunk.lengths))
        rows, cols = np.nonzero(selected)
        counts = np.bincount(rows, minlength=len(chunk))
        offsets = np.zeros(len(chunk) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        pos_parts.append(Ragged(cols.astype(np.int64), offsets))
        orig_parts.append(Ragged(padded[rows, cols], offsets.copy()))
    return Ragged.concat(masked_parts), Ragged.concat(pos_parts), Ragged.concat(orig_parts)


def _to_table(seqs: Sequences, masked, order: np.ndarray, id_type: str, cfg: MaskConfig) -> pa.Table:
    """The rows in shuffled ``order`` as an Arrow table of the output schema."""
    schema = shard_schema(id_type, cfg.recipe, cfg.masking)
    ids = (masked[0] if masked is not None else seqs.input_ids).take(order)
    cols = {
        "input_ids": _list_array(ids, schema.field("input_ids").type),
        "token_type_ids": _list_array(seqs.token_type_ids.take(order), schema.field("token_type_ids").type),
    }
    if masked is not None:
        cols["masked_positions"] = _list_array(masked[1].take(order), schema.field("masked_positions").type)
        cols["masked_ids"] = _list_array(masked[2].take(order), schema.field("masked_ids").type)
    if seqs.next_sentence_label is not None:
        cols["next_sentence_label"] = pa.array(seqs.next_sentence_label[order].astype(np.int8), pa.int8())
    return pa.table([cols[f.name] for f in schema], schema=schema)


def _list_array(r: Ragged, list_type: pa.ListType) -> pa.ListArray:
    values = pa.array(r.values.astype(list_type.value_type.to_pandas_dtype(), copy=False))
    return pa.ListArray.from_arrays(pa.array(r.offsets.astype(np.int32)), values, type=list_type)
