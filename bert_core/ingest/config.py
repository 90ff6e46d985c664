"""Typed configuration of the ingestion stage."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, field_validator

from bertflow.bert_core.configtools import Config, Paths


class IngestConfig(Config):
    section = "ingest"

    inputs: Paths = Field(
        ("data/books/*.txt.gz",), min_length=1,
        description="Files, directories or globs to read (.txt, .jsonl, .json, .csv, .tsv, .parquet; .gz/.zst too), "
                    "local or s3://bucket/prefix/")
    text_field: str = Field(
        "text", pattern=r"^[^\x00]+$", description="JSONL field / CSV column / Parquet column holding the text")
    txt_mode: Literal["file", "blank_line"] = Field(
        "file", description=".txt inputs: one document per file, or documents split by blank lines")
    encoding: str | None = Field(
        None, description="Text encoding of the inputs; null: detect per file (BOM, UTF-8, else Latin-1)")
    nfc: bool = Field(True, description="Unicode NFC normalisation")
    strip_control: bool = Field(True, description="Drop control characters (keeps \\t \\n \\r) and stray BOMs")
    normalize_whitespace: bool = Field(True, description="Collapse runs of spaces, CRLF -> LF, trim")
    strip_gutenberg: bool = Field(True, description="Remove Project Gutenberg header/footer boilerplate")
    min_chars: int = Field(20, ge=0, description="Documents shorter than this (after cleaning) are dropped")
    dedup: bool = Field(True, description="Drop exact duplicates (by content hash) across the whole corpus")
    shard_max_mb: float = Field(
        64, gt=0, description="Bound on a shard's uncompressed text size (MiB; fractions allowed)")
    strict: bool = Field(False, description="Fail on the first unreadable file instead of reporting it")
    batch_rows: int = Field(1024, ge=1, description="Rows per Arrow batch when streaming JSON / CSV / Parquet inputs")
    duckdb_memory_mb: int = Field(512, ge=64, description="DuckDB memory_limit per reader connection (MiB)")
    duckdb_threads: int = Field(
        1, ge=1, description="DuckDB threads per reader connection (the Python side is the bottleneck)")
    workers: int = Field(
        0, ge=0, description="Cleaning processes; 0: one per core (1 for inputs < 16 MiB); same output either way")
    staging_mb: float = Field(
        64, gt=0, description="A file's documents are held in memory up to this size (MiB), then spilled to disk")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        "zstd", description="Parquet codec of the corpus shards")

    @field_validator("inputs")
    @classmethod
    def _no_empty_path(cls, inputs: tuple[str, ...]) -> tuple[str, ...]:
        if not all(p.strip() for p in inputs):
            raise ValueError("empty path")
        from bertflow.bert_core.errors import InputError
        from bertflow.bert_core.storage import refuse_credentials

        for p in inputs:  # refused here, before the config is logged anywhere
            try:
                refuse_credentials(p)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return inputs

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, encoding: str | None) -> str | None:
        if encoding is not None:
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
        return encoding
