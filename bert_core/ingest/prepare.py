"""Per-document work that needs no shared state: clean, length check, content hash, sentence starts.

It runs in worker processes when ``ingest.workers > 1`` (the stage keeps reading, dedup
and writing in the parent, in input order, so the output does not depend on the number
of workers). Kept here, away from I/O, so a worker imports nothing heavy.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from dataclasses import dataclass, field

from bertflow.bert_core.ingest.clean import Cleaner
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.discover import InputFile
from bertflow.bert_core.ingest.readers import ReadStats, iter_raw_documents
from bertflow.bert_core.ingest.sentences import sentence_starts


@dataclass
class PreparedBatch:
    """The kept documents of a batch of raw documents, and the dropped counts.

    Columnar and in bytes (UTF-8 text, int32 offsets), so that handing it from a worker
    to the parent and on to Arrow never re-encodes the text.
    """

    digests: list[bytes] = field(default_factory=list)  # blake2b-128 of the cleaned text's UTF-8
    texts: list[bytes] = field(default_factory=list)  # cleaned text, UTF-8
    n_chars: list[int] = field(default_factory=list)
    sent_starts: list[bytes] = field(default_factory=list)  # int32 offsets, native byte order
    dropped: Counter = field(default_factory=Counter)
    gutenberg_stripped: int = 0

    @property
    def docs_in(self) -> int:
        return len(self.digests) + sum(self.dropped.values())


def content_digest(encoded: bytes) -> bytes:
    """The 16-byte content hash behind ``doc_id`` (hex) and exact dedup."""
    return hashlib.blake2b(encoded, digest_size=16).digest()


class Preparer:
    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.cleaner = Cleaner(cfg)
        self.min_chars = max(cfg.min_chars, 1)

    def whole_file(self, f: InputFile) -> tuple[ReadStats, PreparedBatch]:
        """Read and prepare a file whose documents are held in memory anyway (.txt, one per file).

        Doing the reading here too spares the parent the decompression, and the pipe a copy of the raw text.
        Raises FileRejected like the readers.
        """
        stats = ReadStats()
        docs = [doc for batch in iter_raw_documents(f, self.cfg, stats) for doc in batch]
        return stats, self(docs)

    def __call__(self, raw_docs: list[str | None]) -> PreparedBatch:
        out = PreparedBatch()
        clean = self.cleaner
        stripped_before = clean.gutenberg_stripped
        for raw in raw_docs:
            if raw is None:
                out.dropped["null_text"] += 1
                continue
            text = clean(raw)
            if len(text) < self.min_chars:
                out.dropped["empty" if not text.strip() else "too_short"] += 1
                continue
            encoded = text.encode("utf-8")
            out.digests.append(content_digest(encoded))
            out.texts.append(encoded)
            out.n_chars.append(len(text))
            out.sent_starts.append(array("i", sentence_starts(text)).tobytes())
        out.gutenberg_stripped = clean.gutenberg_stripped - stripped_before
        return out


_worker: Preparer | None = None


def init_worker(cfg: IngestConfig, stage_pid: int | None = None) -> None:
    """Process-pool initializer: one Preparer per worker process (which ends if the stage process dies)."""
    global _worker
    if stage_pid is not None:
        from bertflow.bert_core.orphans import exit_with

        exit_with(stage_pid)
    _worker = Preparer(cfg)


def prepare_in_worker(raw_docs: list[str | None]) -> PreparedBatch:
    assert _worker is not None, "init_worker was not called"
    return _worker(raw_docs)


def prepare_file_in_worker(f: InputFile) -> tuple[ReadStats, PreparedBatch]:
    assert _worker is not None, "init_worker was not called"
    return _worker.whole_file(f)
