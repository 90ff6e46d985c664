"""The scored output: its schema, its record batches, and a writer thread.

Columns: the carried input columns, then the head's own (:mod:`bert_core.score.heads`):

- sequence: ``label`` (string), ``score`` (float32, the winning probability), optional
  ``probabilities`` (list<float32>, one per class in id order), optional ``embedding``
  (fixed_size_list<float32>[hidden]);
- token: ``entities`` (list<struct<label, start, end, text, score>>, character offsets
  into the text), optional ``tokens`` / ``tags`` (list<string>);
- qa: ``answer`` (string), ``answer_start`` / ``answer_end`` (int32 character offsets
  into the context), ``score`` (float32);

then ``model_uri``, ``model_version`` and ``error`` (null when the row is fine;
``truncated`` rows are still scored). Rows that were not scored have null predictions
(and an all-NaN embedding: pyarrow < 26 cannot read null fixed-size lists from Parquet).
``cfg.output_prefix`` prefixes the added names.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.score.heads import COMMON

_FLUSH_BYTES = 64 << 20


@dataclass(frozen=True)
class OutputSpec:
    carried: pa.Schema
    head_fields: tuple[pa.Field, ...]  # the head's columns, unprefixed
    model_uri: str
    model_version: str
    prefix: str = ""

    def names(self) -> dict[str, str]:
        return {b: self.prefix + b for b in [f.name for f in self.head_fields] + list(COMMON)}

    def schema(self, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
        fields = list(self.carried) + [f.with_name(self.prefix + f.name) for f in self.head_fields]
        fields += [pa.field(self.prefix + n, pa.string()) for n in COMMON]
        return pa.schema(fields, metadata=metadata)


def build_batch(spec: OutputSpec, carried: pa.RecordBatch, head_columns: list[pa.Array],
                errors: list[str | None]) -> pa.RecordBatch:
    """Assemble one output batch from the carried columns, the head's columns and the row codes."""
    n = carried.num_rows
    arrays = list(carried.columns) + list(head_columns)
    arrays += [_constant(spec.model_uri, n), _constant(spec.model_version, n), pa.array(errors, pa.string())]
    return pa.RecordBatch.from_arrays(arrays, schema=spec.schema())


def _constant(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                          pa.array([value], pa.string())).cast(pa.string())


class WriterThread:
    """Writes output batches to one Parquet file on a thread, so encoding and I/O overlap the model.

    Batches are buffered into row groups of ``row_group_rows`` (or 64 MiB). ``close``
    adds the commit record to the footer and returns the number of rows written.
    """

    def __init__(self, path: Path | str, schema: pa.Schema, compression: str, row_group_rows: int, depth: int = 2,
                 filesystem=None):
        self.path, self.rows = path, 0
        self._writer = pq.ParquetWriter(str(path), schema, compression=None if compression == "none" else compression,
                                        filesystem=filesystem)  # filesystem: a pyarrow.fs one (S3...), None: local
        self._row_group_rows = row_group_rows
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="score-writer", daemon=True)
        self._thread.start()

    def put(self, batch) -> None:
        """Queue a RecordBatch (or a zero-argument callable returning one); blocks while the queue is full."""
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        buffer: list[pa.RecordBatch] = []
        rows = size = 0
        try:
            while True:
                item = self._queue.get()
                if item is None or (rows and (rows >= self._row_group_rows or size >= _FLUSH_BYTES)):
                    if buffer:
                        self._writer.write_table(pa.Table.from_batches(buffer), row_group_size=self._row_group_rows)
                        self.rows += rows
                        buffer, rows, size = [], 0, 0
                if item is None:
                    return
                if callable(item):  # a deferred build_batch: Arrow assembly happens here, off the model thread
                    item = item()
                buffer.append(item)
                rows += item.num_rows
                size += item.nbytes
        except BaseException as exc:  # handed to the main thread by put()/close()
            self._error = exc
            while True:  # drain so a blocked put() wakes up
                try:
                    if self._queue.get_nowait() is None:
                        return
                except queue.Empty:
                    return

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, metadata: dict[bytes, bytes] | None = None) -> int:
        """Flush, add ``metadata`` to the footer, close the file; returns rows written."""
        self.put_end()
        self._thread.join()
        self._raise_if_failed()
        if metadata:
            self._writer.add_key_value_metadata(metadata)
        self._writer.close()
        return self.rows

    def put_end(self) -> None:
        if self._thread.is_alive():
            self.put(None)

    def abort(self) -> None:
        """Stop the thread and close the file without caring about errors (the caller deletes it)."""
        try:
            if self._thread.is_alive():
                self._queue.put(None, timeout=5)
            self._thread.join(timeout=30)
        except Exception:
            pass
        try:
            self._writer.close()
        except Exception:
            pass
