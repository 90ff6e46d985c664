"""Ingestion stage: raw files -> cleaned, deduplicated, sentence-split Parquet corpus shards.

Entry point :func:`run` (called by the CLI, the Prefect task and the tests).

How it flows: files are read one at a time and streamed in batches (memory does not grow
with the corpus; only the dedup set does, 16 bytes per kept document). Each batch is
cleaned / hashed / sentence-split by :mod:`prepare` — in worker processes when
``ingest.workers > 1`` — and the results are consumed **in input order** for dedup and
writing, so the corpus is identical whatever the number of workers. A file's documents
are staged until the file has been read to its end: a file rejected half-way adds nothing.

Workers are *spawned* processes: a script calling :func:`run` with ``workers != 1`` needs
the usual ``if __name__ == "__main__":`` guard (the CLI, Prefect and pytest have it).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.discover import InputFile, discover, local_copies
from bertflow.bert_core.ingest.prepare import PreparedBatch, Preparer, init_worker, prepare_file_in_worker, prepare_in_worker
from bertflow.bert_core.ingest.readers import FileRejected, ReadStats, iter_raw_documents
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.sentences import SPLITTER_VERSION
from bertflow.bert_core.ingest.shards import FINGERPRINT_SALT, FileStaging, ShardWriter
from bertflow.bert_core.stageio import ProgressFn, StageResult, atomic_dir, file_digest, report, write_manifest

MiB = 1 << 20
DROP_REASONS = ("null_text", "empty", "too_short", "duplicate")
CHUNK_CHARS = 4 << 20  # raw text per unit of work sent to a worker
CHUNK_DOCS = 2048
AUTO_WORKERS_MIN_INPUT = 16 * MiB  # below this much input, worker start-up costs more than it saves


def run(cfg: IngestConfig, out_dir: str | Path, on_progress: ProgressFn | None = None) -> StageResult:
    """Ingest ``cfg.inputs`` into the corpus directory ``out_dir`` (replaced atomically).

    Raises InputError for a missing input, for no documents at all, and (``strict``) for
    the first unreadable file; otherwise unreadable files are reported in
    ``details["rejected"]`` and the manifest.
    """
    started = time.perf_counter()
    files, skipped = discover(cfg.inputs)
    if not files:
        raise InputError(f"no documents: ingest.inputs {list(cfg.inputs)} hold no readable files (skipped: {skipped[:5]})")
    workers = resolve_workers(cfg, files)
    with local_copies(files) as files, atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, int(cfg.shard_max_mb * MiB), cfg.compression)
        ingestion = _Ingestion(cfg, writer, FileStaging(tmp / ".staging.parquet", int(cfg.staging_mb * MiB)))
        with _Submit(cfg, workers) as submit:
            ingestion.run(files, submit, workers, on_progress)
        shards = writer.close()
        if writer.rows == 0:
            raise InputError(ingestion.no_documents_message(files, skipped))
        fingerprint = writer.fingerprint(FINGERPRINT_SALT)
        manifest = ingestion.manifest(files, skipped, shards, fingerprint, workers, time.perf_counter() - started)
        manifest_path = write_manifest(tmp, manifest)
    final = Path(out_dir)
    counts = manifest["counts"]
    metrics = {
        "docs_in": counts["docs_in"],
        "docs_out": counts["docs_out"],
        "bytes_in": counts["bytes_in"],
        "text_bytes_in": counts["text_bytes_in"],
        "chars_out": counts["chars_out"],
        "text_bytes_out": counts["text_bytes_out"],
        "files_rejected": counts["files_rejected"],
        "duplicates_dropped": manifest["dropped"]["duplicate"],
        "replaced_bytes": counts["replaced_bytes"],
        "shards": len(shards),
        "seconds": manifest["elapsed_s"],
    }
    details = {
        "manifest": str(final / manifest_path.name),
        "rejected": manifest["rejected"],
        "corpus_fingerprint": fingerprint,
    }
    return StageResult("ingest", str(final), {k: float(v) for k, v in metrics.items()}, details)


def resolve_workers(cfg: IngestConfig, files: list[InputFile]) -> int:
    """``ingest.workers``, or for 0 (auto) one per available core (at most 8) unless the input is small."""
    if cfg.workers > 0:
        return cfg.workers
    if sum(f.size for f in files) < AUTO_WORKERS_MIN_INPUT:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class _Submit:
    """Where document work runs: ``docs(raw_docs)`` and ``file(f)`` return futures.

    In-process for 1 worker (futures already done), else a spawn-based process pool.
    Spawn, not fork: the parent may hold DuckDB threads, and forking a threaded process is unsafe.
    """

    def __init__(self, cfg: IngestConfig, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.preparer: Preparer | None = None
        if workers <= 1:
            self.preparer = Preparer(cfg)
        else:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(cfg, os.getpid()),  # workers exit if this process is killed (bert_core.orphans)
            )

    def docs(self, raw_docs: list[str | None]) -> Future:
        if self.pool is not None:
            return self.pool.submit(prepare_in_worker, raw_docs)
        return _done(self.preparer, raw_docs)

    def file(self, f: InputFile) -> Future:
        if self.pool is not None:
            return self.pool.submit(prepare_file_in_worker, f)
        return _done(self.preparer.whole_file, f)

    def __enter__(self) -> _Submit:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _done(fn, arg) -> Future:
    fut: Future = Future()
    try:
        fut.set_result(fn(arg))
    except FileRejected as exc:
        fut.set_exception(exc)
    return fut


class _FileState:
    """Counters of the file whose results are being consumed."""

    def __init__(self) -> None:
        self.added: list[bytes] = []  # digests this file put into the dedup set (rolled back on reject)
        self.dropped: Counter[str] = Counter()
        self.docs_out = 0
        self.chars_out = 0
        self.bytes_out = 0
        self.gutenberg_stripped = 0


class _Ingestion:
    """Per-run state: the dedup set, counters, per-file records, rejected files."""

    def __init__(self, cfg: IngestConfig, writer: ShardWriter, staging: FileStaging) -> None:
        self.cfg = cfg
        self.writer = writer
        self.staging = staging
        self.seen: set[bytes] = set()
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.totals: Counter[str] = Counter()
        self.inputs: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.files_done = 0
        self.bytes_done = 0
        self.started = time.perf_counter()
        self._file = _FileState()

    def run(self, files: list[InputFile], submit: _Submit, workers: int, on_progress: ProgressFn | None) -> None:
        """Read every file, keeping a few units of work in flight, consuming results in input order.

        Plain-text files in one-document-per-file mode are read by the workers themselves
        (whole-file tasks); every other file is streamed here and its batches go out in chunks.
        """
        window: deque[tuple] = deque()
        limit = 2 * workers if workers > 1 else 0

        def consume_until(n: int) -> None:
            while len(window) > n:
                self._consume(window.popleft(), len(files), on_progress)

        for f in files:
            if f.format == "txt" and self.cfg.txt_mode == "file":
                window.append(("file", f, submit.file(f)))
                consume_until(limit)
                continue
            stats = ReadStats()
            docs_read = 0
            try:
                for batch in iter_raw_documents(f, self.cfg, stats):
                    for chunk in _chunks(batch):
                        docs_read += len(chunk)
                        window.append(("batch", f, submit.docs(chunk)))
                        consume_until(limit)
            except FileRejected as exc:
                self._fail_if_strict(f, str(exc))
                window.append(("reject", f, str(exc), docs_read))
            else:
                window.append(("end", f, stats, docs_read))
        consume_until(0)

    def _fail_if_strict(self, f: InputFile, reason: str) -> None:
        if self.cfg.strict:
            raise InputError(f"ingest: unreadable input {f.name}: {reason} (strict mode; set ingest.strict=false to skip such files)")

    def _consume(self, event: tuple, n_files: int, on_progress: ProgressFn | None) -> None:
        """Apply one unit of finished work; events of one file are contiguous and in order."""
        kind, f, payload = event[0], event[1], event[2:]
        if kind == "batch":
            self._add_prepared(f, payload[0].result())
            return
        if kind == "file":
            try:
                stats, prepared = payload[0].result()
            except FileRejected as exc:
                self._fail_if_strict(f, str(exc))
                self._reject_file(f, str(exc), 0)
            else:
                self._add_prepared(f, prepared)
                self._commit_file(f, stats, prepared.docs_in)
        elif kind == "end":
            self._commit_file(f, *payload)
        else:
            self._reject_file(f, *payload)
        self._file = _FileState()
        self.files_done += 1
        self.bytes_done += f.size
        seconds = max(time.perf_counter() - self.started, 1e-9)
        report(on_progress, self.files_done, n_files, "files", mb_per_s=self.bytes_done / MiB / seconds,
               docs=self.totals["docs_out"])

    def _add_prepared(self, f: InputFile, prepared: PreparedBatch) -> None:
        state, seen, staging, dedup = self._file, self.seen, self.staging, self.cfg.dedup
        state.dropped.update(prepared.dropped)
        state.gutenberg_stripped += prepared.gutenberg_stripped
        for digest, text, n_chars, starts in zip(prepared.digests, prepared.texts, prepared.n_chars, prepared.sent_starts):
            if dedup:
                if digest in seen:
                    state.dropped["duplicate"] += 1
                    continue
                seen.add(digest)
                state.added.append(digest)
            staging.append(digest.hex(), f.name, text, n_chars, starts)
            state.docs_out += 1
            state.chars_out += n_chars
            state.bytes_out += len(text)

    def _commit_file(self, f: InputFile, stats: ReadStats, docs_in: int) -> None:
        state = self._file
        self.staging.commit(self.writer)
        self.dropped.update(state.dropped)
        self.totals.update(
            docs_in=docs_in,
            docs_out=state.docs_out,
            chars_out=state.chars_out,
            text_bytes_out=state.bytes_out,
            text_bytes_in=stats.text_bytes,
            replaced_bytes=stats.replaced_bytes,
            gutenberg_stripped=state.gutenberg_stripped,
        )
        self.inputs.append(
            {
                **_file_record(f),
                "encoding": stats.encoding,
                "replaced_bytes": stats.replaced_bytes,
                "text_bytes": stats.text_bytes,
                "docs_in": docs_in,
                "docs_out": state.docs_out,
                "dropped": {k: v for k, v in state.dropped.items() if v},
            }
        )

    def _reject_file(self, f: InputFile, reason: str, docs_read: int) -> None:
        self.staging.discard()
        self.seen.difference_update(self._file.added)
        self.rejected.append({**_file_record(f), "reason": reason, "docs_read_before_error": docs_read})

    def no_documents_message(self, files: list[InputFile], skipped: list[str]) -> str:
        parts = [f"{len(files)} file(s) found", f"{len(self.rejected)} rejected"]
        dropped = {k: v for k, v in self.dropped.items() if v}
        if dropped:
            parts.append(f"dropped: {dropped}")
        if skipped:
            parts.append(f"{len(skipped)} skipped (unknown type)")
        first = f"; first rejected: {self.rejected[0]['path']}: {self.rejected[0]['reason']}" if self.rejected else ""
        return (
            f"no documents in ingest.inputs {list(self.cfg.inputs)} ({', '.join(parts)}){first}; "
            f"check the paths, ingest.text_field ({self.cfg.text_field!r}) and ingest.min_chars ({self.cfg.min_chars})"
        )

    def manifest(self, files, skipped, shards, fingerprint, workers, elapsed) -> dict[str, Any]:
        t = self.totals
        return {
            "stage": "ingest",
            "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
            "config": to_dict(self.cfg),
            "corpus_fingerprint": fingerprint,
            "sentence_splitter": SPLITTER_VERSION,
            "whitespace": "single newlines kept; blank-line runs -> one blank line (paragraph break)",
            "counts": {
                "files_found": len(files),
                "files_read": len(self.inputs),
                "files_rejected": len(self.rejected),
                "files_skipped": len(skipped),
                "docs_in": t["docs_in"],
                "docs_out": t["docs_out"],
                "bytes_in": sum(r["bytes"] for r in self.inputs),
                "text_bytes_in": t["text_bytes_in"],
                "chars_out": t["chars_out"],
                "text_bytes_out": t["text_bytes_out"],
                "replaced_bytes": t["replaced_bytes"],
                "gutenberg_stripped": t["gutenberg_stripped"],
            },
            "dropped": dict(self.dropped),
            "rejected": self.rejected,
            "skipped": skipped,
            "inputs": self.inputs,
            "shards": [vars(s) for s in shards],
            "workers": workers,
            "versions": _versions(),
            "elapsed_s": round(elapsed, 3),
        }


def _chunks(batch: list[str | None]):
    """Split a reader batch into units of at most ~CHUNK_CHARS of text or CHUNK_DOCS documents."""
    start, size = 0, 0
    for i, doc in enumerate(batch):
        size += len(doc) if doc is not None else 0
        if size >= CHUNK_CHARS or i + 1 - start >= CHUNK_DOCS:
            yield batch[start : i + 1]
            start, size = i + 1, 0
    if start < len(batch):
        yield batch[start:]


def _file_record(f: InputFile) -> dict[str, Any]:
    try:
        digest = file_digest(f.path)
    except OSError:
        digest = None
    return {"path": f.name, "format": f.format, "compression": f.compression, "bytes": f.size, "sha256": digest}


def _versions() -> dict[str, str]:
    import duckdb
    import pyarrow

    from bertflow.bert_core import __version__

    return {"bertflow": __version__, "pyarrow": pyarrow.__version__, "duckdb": duckdb.__version__}
