"""Score one Parquet file into one output file, with reading, the model and writing overlapped.

Three threads per file, joined by bounded queues (so memory stays flat):

- a *producer* reads record batches (``ParquetFile.iter_batches``), filters them,
  cuts them into windows of ``batch_size * sort_window`` rows, validates texts and
  tokenizes each window in one ``encode_batch`` call (Rust, releases the GIL, uses
  every core), then sorts by length and pads per batch;
- the *caller's thread* runs the model under ``torch.inference_mode``, queueing a
  window's batches on the GPU before collecting the previous window's results;
- a *writer* assembles Arrow batches and writes Parquet row groups.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.encode import EncodedWindow
from bertflow.bert_core.score.heads import Head, added_names, input_columns
from bertflow.bert_core.score.where import BoundWhere, Where, bind_where
from bertflow.bert_core.score.model import Classifier, cpu_threads, forward, torch_threads
from bertflow.bert_core.score.output import OutputSpec, WriterThread, build_batch

_END = object()


@dataclass(frozen=True)
class ReadPlan:
    """Which columns a file needs, which it carries to the output, its bound condition, the row groups to read."""

    read_columns: tuple[str, ...]
    carried: pa.Schema
    inputs: tuple[str, ...]  # the columns the head reads (text [, pair]; question, context)
    filter: BoundWhere | None
    row_groups: tuple[int, ...] | None = None  # None: all; the others' statistics rule out score.where


def read_plan(cfg: ScoreConfig, schema: pa.Schema, partition: dict[str, pa.Scalar], flt: Where | None,
              where: str, head: str = "sequence") -> ReadPlan:
    """Check a file's schema against the config and ``head``'s inputs; InputError naming the column at fault."""
    names = schema.names
    inputs = input_columns(cfg, head)
    for what, col in inputs:
        if col not in names:
            raise InputError(f"{where} has no column {col!r} ({what}); its columns: {', '.join(names)}")
    text_cols = {col for _, col in inputs}
    if cfg.key_columns is None:
        carried = [n for n in names if n not in text_cols]
    else:
        missing = [c for c in cfg.key_columns if c not in names and c not in partition]
        if missing:
            raise InputError(f"{where} has no column {missing[0]!r} (score.key_columns); "
                             f"its columns: {', '.join(names)}")
        carried = [c for c in cfg.key_columns if c in names]  # partition keys stay in the path
    clash = sorted((set(carried) | set(partition)) & set(added_names(cfg, head)))
    if clash:
        raise InputError(f"{where}: column {clash[0]!r} clashes with an output column; leave it out with "
                         f"score.key_columns or set score.output_prefix (e.g. 'pred_')")
    used = text_cols | set(carried) | (set(flt.columns) if flt is not None else set())
    dup = next((n for n in names if n in used and names.count(n) > 1), None)
    if dup is not None:  # pyarrow cannot pick one of them by name (a raw KeyError otherwise)
        hint = "" if dup in text_cols else " (or leave the column out with score.key_columns)"
        raise InputError(f"{where} has {names.count(dup)} columns named {dup!r}; rename them in the file{hint}")
    bound = bind_where(flt, schema, partition, where)
    needed = list(dict.fromkeys(carried + sorted(text_cols) + (bound.columns if bound else [])))
    carried_schema = pa.schema([schema.field(n).remove_metadata() for n in carried])
    return ReadPlan(tuple(needed), carried_schema, tuple(col for _, col in inputs), bound)


@dataclass
class Counts:
    rows_in: int = 0  # rows in the input file (its footer)
    rows_read: int = 0  # rows the reader went through (must equal rows_in)
    rows_filtered: int = 0  # left out by the filter
    rows_out: int = 0  # written (= rows_in - rows_filtered)
    rows_scored: int = 0  # with a prediction (truncated rows included)
    rows_error: int = 0  # null prediction, error code set
    rows_truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    row_groups_read: int = 0
    row_groups_skipped: int = 0
    bytes_read: int = 0


def score_stream(pf: pq.ParquetFile, where: str, tmp: Path | str, clf: Classifier, head: Head, cfg: ScoreConfig,
                 rp: ReadPlan, spec: OutputSpec, commit_record: Callable[[Counts], dict[bytes, bytes]],
                 on_rows: Callable[[int], None] | None = None, filesystem=None) -> Counts:
    """Score every row of ``pf`` into ``tmp`` (on ``filesystem``; a complete Parquet file when this returns)."""
    counts = Counts(rows_in=pf.metadata.num_rows)
    writer = WriterThread(tmp, spec.schema(), cfg.compression, cfg.row_group_rows, filesystem=filesystem)
    q: queue.Queue = queue.Queue(maxsize=cfg.prefetch_windows)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(pf, where, clf, head, cfg, rp, q, stop),
                                name="score-tokenize", daemon=True)
    producer.start()
    try:
        previous = None
        threads = torch_threads(cpu_threads(cfg)) if clf.device.type == "cpu" else contextlib.nullcontext()
        with threads, torch.inference_mode():
            for carried, enc, rows_read in _consume(q):
                pending = [(b.rows, forward(clf, head, b.input_ids, b.attention_mask, b.token_type_ids, b.padded))
                           for b in enc.batches]
                if previous is not None:
                    _finish(previous, writer, spec, head, counts, on_rows)
                previous = (carried, enc, pending, rows_read)
            if previous is not None:
                _finish(previous, writer, spec, head, counts, on_rows)
        counts.rows_filtered = counts.rows_read - counts.rows_out
        written = writer.close(commit_record(counts))
    except BaseException:
        stop.set()
        writer.abort()
        raise
    finally:
        stop.set()
        producer.join(timeout=30)
    # Rows in = rows out: every row read is either filtered out or written, scored or flagged.
    if not (counts.rows_read == counts.rows_in == counts.rows_out + counts.rows_filtered
            and counts.rows_scored + counts.rows_error == counts.rows_out == written):
        raise RuntimeError(f"{where}: row counts do not add up (in {counts.rows_in}, read {counts.rows_read}, "
                           f"filtered {counts.rows_filtered}, written {written}, scored {counts.rows_scored}, "
                           f"errors {counts.rows_error})")
    return counts


def _finish(item, writer: WriterThread, spec: OutputSpec, head: Head, counts: Counts,
            on_rows: Callable[[int], None] | None) -> None:
    carried, enc, pending, rows_read = item
    n = enc.n
    if n:
        results = [(rows, pend.result()) for rows, pend in pending]
        # The head's columns are built on the writer thread, off the model's.
        writer.put(functools.partial(_assemble, spec, head, carried, enc, results))
        scored = int(enc.scored.sum())
        counts.rows_out += n
        counts.rows_scored += scored
        counts.rows_error += n - scored
        counts.tokens += enc.tokens
        counts.padded_tokens += enc.padded_tokens
        for code in enc.errors:
            if code is not None:
                key = code if not code.startswith("not_text:") else "not_text"
                counts.errors_by_code[key] = counts.errors_by_code.get(key, 0) + 1
        counts.rows_truncated = counts.errors_by_code.get("truncated", 0)
    counts.rows_read += rows_read
    if on_rows is not None and rows_read:
        on_rows(rows_read)


def _assemble(spec: OutputSpec, head: Head, carried: pa.RecordBatch, enc: EncodedWindow, results) -> pa.RecordBatch:
    return build_batch(spec, carried, head.columns(enc, results), enc.errors)


def _consume(q: queue.Queue) -> Iterator[tuple]:
    while True:
        item = q.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(pf: pq.ParquetFile, where: str, clf: Classifier, head: Head, cfg: ScoreConfig, rp: ReadPlan,
             q: queue.Queue, stop: threading.Event) -> None:
    try:
        window = cfg.batch_size * cfg.sort_window
        pin = clf.device.type == "cuda"
        for pieces, rows_read in _windows(read_batches(pf, where, cfg, rp), window):
            if stop.is_set():
                return
            if not pieces:  # everything read since the last window was filtered out: progress only
                if not _put(q, stop, (None, EncodedWindow(0, [], np.zeros(0, bool), [], 0, 0), rows_read)):
                    return
                continue
            batch = _concat(pieces)
            enc = head.encode(batch, rp.inputs, pin)
            carried = batch.select(rp.carried.names)
            if not _put(q, stop, (carried, enc, rows_read)):
                return
        _put(q, stop, _END)
    except BaseException as exc:  # handed to the model thread, which re-raises it
        _put(q, stop, exc)


def read_batches(pf: pq.ParquetFile, where: str, cfg: ScoreConfig,
                 rp: ReadPlan) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Yield ``(filtered batch, rows read)``; the rows of skipped row groups count as read and filtered out."""
    groups = range(pf.metadata.num_row_groups) if rp.row_groups is None else rp.row_groups
    skipped = pf.metadata.num_rows - sum(pf.metadata.row_group(i).num_rows for i in groups)
    if skipped or not groups:
        yield pa.RecordBatch.from_pylist([], schema=pa.schema([pf.schema_arrow.field(c) for c in rp.read_columns])), \
            skipped
    if not groups:
        return
    try:
        for batch in pf.iter_batches(batch_size=cfg.read_batch_rows, columns=list(rp.read_columns),
                                     row_groups=list(groups)):
            n = batch.num_rows
            if rp.filter is not None:
                batch = rp.filter.apply(batch)
            yield batch, n
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{where}: cannot read Parquet data: {exc}") from None


def _windows(batches: Iterator[tuple[pa.RecordBatch, int]], size: int) -> Iterator[tuple[list[pa.RecordBatch], int]]:
    """Regroup batches into windows of exactly ``size`` rows (the last may be shorter)."""
    buf: list[pa.RecordBatch] = []
    have = read = 0
    for batch, n_read in batches:
        read += n_read
        while batch.num_rows:
            take = min(size - have, batch.num_rows)
            buf.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == size:
                yield buf, read
                buf, have, read = [], 0, 0
    if have or read:
        yield buf, read


def _concat(pieces: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(pieces) == 1:
        return pieces[0]
    table = pa.Table.from_batches(pieces).combine_chunks()
    return pa.RecordBatch.from_arrays([c.chunk(0) for c in table.columns], schema=table.schema)
