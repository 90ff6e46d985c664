"""Writing a corpus from documents that are already clean: the ingest stage's writer, without its reading.

For text that needs no cleaning or deduplication (benchmarks, tests, another pipeline's output):
the shards, row groups, doc ids and fingerprint are those the ingest stage writes, so the corpus
format has one writer (:mod:`shards`) and vocab / masked-data generation read the result as they
read ingestion's output.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from pathlib import Path

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.prepare import content_digest
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.sentences import SPLITTER_VERSION, sentence_starts
from bertflow.bert_core.ingest.shards import FINGERPRINT_SALT, ROW_GROUP_BYTES, Rows, ShardWriter
from bertflow.bert_core.stageio import atomic_dir, write_manifest

_BATCH_DOCS = 1024  # documents handed to the writer at a time: memory stays at a batch, not the corpus twice


def write_corpus(out_dir: str | Path, docs: Sequence[str], sent_starts: Sequence[Sequence[int]] | None = None, *,
                 source: str = "documents", shard_max_bytes: int = 64 << 20, row_group_bytes: int = ROW_GROUP_BYTES,
                 compression: str = "zstd") -> Path:
    """Write ``docs`` as they are, in order, as the corpus directory ``out_dir`` (replaced atomically).

    ``sent_starts``: each document's sentence starts; by default the ingest stage's splitter finds them.
    ``shard_max_bytes`` / ``row_group_bytes``: bounds on the UTF-8 text per shard / row group, as
    ``ingest.shard_max_mb`` sets them for the stage. Raises InputError when ``docs`` is empty.
    """
    if not docs:
        raise InputError(f"no documents to write to {out_dir}")
    if sent_starts is not None and len(sent_starts) != len(docs):
        raise ValueError(f"{len(sent_starts)} sent_starts for {len(docs)} documents")
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, shard_max_bytes, compression, row_group_bytes)
        rows, chars, text_bytes = Rows(), 0, 0
        for i, text in enumerate(docs):
            encoded = text.encode("utf-8")
            starts = sentence_starts(text) if sent_starts is None else sent_starts[i]
            rows.append(content_digest(encoded).hex(), source, encoded, len(text), array("i", starts).tobytes())
            chars, text_bytes = chars + len(text), text_bytes + len(encoded)
            if len(rows) == _BATCH_DOCS:
                writer.add(rows)
                rows = Rows()
        writer.add(rows)
        shards = writer.close()
        write_manifest(tmp, {
            "stage": "ingest",
            "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
            "corpus_fingerprint": writer.fingerprint(FINGERPRINT_SALT),
            "sentence_splitter": SPLITTER_VERSION if sent_starts is None else "given",
            "counts": {"docs_in": len(docs), "docs_out": len(docs), "chars_out": chars, "text_bytes_out": text_bytes},
            "shards": [vars(s) for s in shards],
        })
    return Path(out_dir)
