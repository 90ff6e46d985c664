"""Writing corpus shards of bounded size, and staging one input file's documents.

A shard holds at most ``max_bytes`` of UTF-8 text (a single document bigger than that
gets a shard of its own). Rows go out in row groups of a few MiB, so readers streaming
with ``ParquetFile.iter_batches`` stay small too.

:class:`FileStaging` holds the documents of the file being read until the file is known
to be good: a file rejected half-way (truncated, malformed record) then adds nothing.
Small files stay in memory; past ``budget_bytes`` the staged rows spill to a Parquet file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.sentences import SPLITTER_VERSION

ROW_GROUP_BYTES = 8 << 20
FINGERPRINT_SALT = f"{CORPUS_SCHEMA}\n{SPLITTER_VERSION}"
"""Hashed into the corpus fingerprint after the doc ids: a new format or sentence rules make a new corpus."""
_COLUMNS = CORPUS_SCHEMA.names


@dataclass
class Rows:
    """Corpus rows as column lists: text as UTF-8 bytes, sentence starts as int32 bytes."""

    doc_id: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    text: list[bytes] = field(default_factory=list)
    n_chars: list[int] = field(default_factory=list)
    sent_starts: list[bytes] = field(default_factory=list)

    def append(self, doc_id: str, source: str, text: bytes, n_chars: int, starts: bytes) -> None:
        self.doc_id.append(doc_id)
        self.source.append(source)
        self.text.append(text)
        self.n_chars.append(n_chars)
        self.sent_starts.append(starts)

    def __len__(self) -> int:
        return len(self.doc_id)

    def table(self) -> pa.Table:
        lengths = np.fromiter((len(s) // 4 for s in self.sent_starts), dtype=np.int32, count=len(self))
        offsets = np.zeros(len(self) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.frombuffer(b"".join(self.sent_starts), dtype=np.int32)
        arrays = [
            pa.array(self.doc_id, pa.string()),
            pa.array(self.source, pa.string()),
            pa.array(self.text, pa.string()),  # bytes in, validated as UTF-8
            pa.array(self.n_chars, pa.int32()),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
        ]
        return pa.Table.from_arrays(arrays, schema=CORPUS_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.RecordBatch | pa.Table) -> Rows:
        starts = table.column("sent_starts")
        if isinstance(starts, pa.ChunkedArray):
            starts = starts.combine_chunks()
        offsets = starts.offsets.to_numpy()
        values = starts.values.to_numpy()
        return cls(
            doc_id=table.column("doc_id").to_pylist(),
            source=table.column("source").to_pylist(),
            text=table.column("text").cast(pa.binary()).to_pylist(),
            n_chars=table.column("n_chars").to_pylist(),
            sent_starts=[values[offsets[i] : offsets[i + 1]].astype(np.int32).tobytes() for i in range(len(offsets) - 1)],
        )


@dataclass
class ShardInfo:
    name: str
    rows: int
    text_bytes: int
    file_bytes: int


class ShardWriter:
    """Appends rows to ``shard-00000.parquet``, ``shard-00001.parquet`` ... in ``out_dir``."""

    def __init__(self, out_dir: str | Path, max_bytes: int, compression: str = "zstd",
                 row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.out_dir = Path(out_dir)
        self.max_bytes = max(1, int(max_bytes))
        self.compression = None if compression == "none" else compression
        self.row_group_bytes = max(1, min(int(row_group_bytes), self.max_bytes))
        self.shards: list[ShardInfo] = []
        self._writer: pq.ParquetWriter | None = None
        self._shard_rows = 0
        self._shard_bytes = 0  # text already written to the open shard
        self._pending = Rows()
        self._pending_bytes = 0
        self._fingerprint = hashlib.sha256()
        self.rows = 0

    def add(self, rows: Rows) -> None:
        for i in range(len(rows)):
            n = len(rows.text[i])
            if self._shard_bytes + self._pending_bytes + n > self.max_bytes and self._shard_bytes + self._pending_bytes > 0:
                self._flush()
                self._close_shard()
            self._pending.append(rows.doc_id[i], rows.source[i], rows.text[i], rows.n_chars[i], rows.sent_starts[i])
            self._pending_bytes += n
            if self._pending_bytes >= self.row_group_bytes:
                self._flush()

    def close(self) -> list[ShardInfo]:
        self._flush()
        self._close_shard()
        return self.shards

    def fingerprint(self, salt: str) -> str:
        """sha256 over the ordered doc ids (content hashes) of every row written, plus ``salt``."""
        h = self._fingerprint.copy()
        h.update(salt.encode())
        return h.hexdigest()

    def _flush(self) -> None:
        if not len(self._pending):
            return
        if self._writer is None:
            name = f"shard-{len(self.shards):05d}.parquet"
            self._writer = pq.ParquetWriter(
                self.out_dir / name,
                CORPUS_SCHEMA,
                compression=self.compression,
                use_dictionary=["source"],  # texts and ids are unique: dictionary pages would only cost time
                write_statistics=["n_chars"],
            )
            self.shards.append(ShardInfo(name, 0, 0, 0))
        self._writer.write_table(self._pending.table())
        for doc_id in self._pending.doc_id:
            self._fingerprint.update(doc_id.encode())
        self._shard_rows += len(self._pending)
        self._shard_bytes += self._pending_bytes
        self.rows += len(self._pending)
        self._pending = Rows()
        self._pending_bytes = 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        info = self.shards[-1]
        info.rows, info.text_bytes = self._shard_rows, self._shard_bytes
        info.file_bytes = (self.out_dir / info.name).stat().st_size
        self._writer = None
        self._shard_rows = self._shard_bytes = 0


class FileStaging:
    """The documents of one input file, committed to the writer only once the file read cleanly."""

    def __init__(self, spill_path: str | Path, budget_bytes: int) -> None:
        self.spill_path = Path(spill_path)
        self.budget_bytes = max(1, int(budget_bytes))
        self._rows = Rows()
        self._bytes = 0
        self._spill: pq.ParquetWriter | None = None
        self.docs = 0

    def append(self, doc_id: str, source: str, text: bytes, n_chars: int, starts: bytes) -> None:
        self._rows.append(doc_id, source, text, n_chars, starts)
        self._bytes += len(text)
        self.docs += 1
        if self._bytes >= self.budget_bytes:
            self._spill_rows()

    def commit(self, writer: ShardWriter) -> None:
        if self._spill is None:
            writer.add(self._rows)
        else:
            self._spill_rows()
            self._spill.close()
            self._spill = None
            with pq.ParquetFile(self.spill_path) as pf:
                for batch in pf.iter_batches(batch_size=1024, use_threads=False):
                    writer.add(Rows.from_table(batch))
        self.discard()

    def discard(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self.spill_path.unlink(missing_ok=True)
        self._rows = Rows()
        self._bytes = 0
        self.docs = 0

    def _spill_rows(self) -> None:
        if not len(self._rows):
            return
        if self._spill is None:
            self._spill = pq.ParquetWriter(self.spill_path, CORPUS_SCHEMA, compression="lz4")
        self._spill.write_table(self._rows.table())
        self._rows = Rows()
        self._bytes = 0
