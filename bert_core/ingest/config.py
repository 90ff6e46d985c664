"""Typed configuration of the ingestion stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bert_core.configtools import check


@dataclass(frozen=True)
class IngestConfig:
    inputs: tuple[str, ...] = ("data/books/*.txt.gz",)  # files, directories or globs
    text_field: str = "text"  # JSONL field / CSV column / Parquet column holding the text
    txt_mode: Literal["file", "blank_line"] = "file"  # .txt: one doc per file, or docs split by blank lines
    encoding: str | None = None  # None: detect per file (BOM, UTF-8, else Latin-1)
    nfc: bool = True  # Unicode NFC normalisation
    strip_control: bool = True  # drop control characters (keeps \n and \t)
    normalize_whitespace: bool = True  # collapse runs of spaces, CRLF -> LF, trim
    strip_gutenberg: bool = True  # remove Project Gutenberg header/footer boilerplate
    min_chars: int = 20  # documents shorter than this (after cleaning) are dropped
    dedup: bool = True  # drop exact duplicates (by content hash) across the whole corpus
    shard_max_mb: int = 64  # bound on a shard's uncompressed text size
    strict: bool = False  # fail on the first unreadable file instead of reporting it

    def __post_init__(self) -> None:
        check(len(self.inputs) > 0, "ingest.inputs: give at least one file, directory or glob")
        check(self.min_chars >= 0, "ingest.min_chars must be >= 0")
        check(self.shard_max_mb >= 1, "ingest.shard_max_mb must be >= 1")
