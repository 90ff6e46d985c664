"""Typed configuration of the ingestion stage."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal

from bertflow.bert_core.configtools import check


@dataclass(frozen=True)
class IngestConfig:
    inputs: tuple[str, ...] = ("data/books/*.txt.gz",)  # files, directories or globs
    text_field: str = "text"  # JSONL field / CSV column / Parquet column holding the text
    txt_mode: Literal["file", "blank_line"] = "file"  # .txt: one doc per file, or docs split by blank lines
    encoding: str | None = None  # None: detect per file (BOM, UTF-8, else Latin-1)
    nfc: bool = True  # Unicode NFC normalisation
    strip_control: bool = True  # drop control characters (keeps \t \n \r) and stray BOMs
    normalize_whitespace: bool = True  # collapse runs of spaces, CRLF -> LF, trim
    strip_gutenberg: bool = True  # remove Project Gutenberg header/footer boilerplate
    min_chars: int = 20  # documents shorter than this (after cleaning) are dropped
    dedup: bool = True  # drop exact duplicates (by content hash) across the whole corpus
    shard_max_mb: float = 64  # bound on a shard's uncompressed text size (MiB; fractions allowed)
    strict: bool = False  # fail on the first unreadable file instead of reporting it
    batch_rows: int = 1024  # rows per Arrow batch when streaming JSON / CSV / Parquet inputs
    duckdb_memory_mb: int = 512  # DuckDB memory_limit per reader connection
    duckdb_threads: int = 1  # DuckDB threads per reader connection (the Python side is the bottleneck)
    workers: int = 0  # cleaning processes; 0 = one per core (1 for inputs < 16 MiB); same output either way
    staging_mb: float = 64  # a file's documents are held in memory up to this size, then spilled to disk
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"  # Parquet codec of the shards

    def __post_init__(self) -> None:
        check(len(self.inputs) > 0, "ingest.inputs: give at least one file, directory or glob")
        check(all(isinstance(p, str) and p.strip() for p in self.inputs), "ingest.inputs: empty path")
        check(bool(self.text_field) and "\0" not in self.text_field, "ingest.text_field must be a non-empty name")
        check(self.min_chars >= 0, "ingest.min_chars must be >= 0")
        check(self.shard_max_mb > 0, "ingest.shard_max_mb must be > 0")
        check(self.batch_rows >= 1, "ingest.batch_rows must be >= 1")
        check(self.duckdb_memory_mb >= 64, "ingest.duckdb_memory_mb must be >= 64")
        check(self.duckdb_threads >= 1, "ingest.duckdb_threads must be >= 1")
        check(self.workers >= 0, "ingest.workers must be >= 0 (0 = auto)")
        check(self.staging_mb > 0, "ingest.staging_mb must be > 0")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                check(False, f"ingest.encoding: unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)")
