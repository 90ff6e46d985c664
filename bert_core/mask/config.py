"""Typed configuration of masked-data generation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from bertflow.bert_core.configtools import Config


class MaskConfig(Config):
    section = "mask"

    recipe: Literal["full", "nsp"] = Field(
        "full", description="full: RoBERTa packed sequences; nsp: BERT segment pairs with next-sentence prediction")
    full_mode: Literal["full_sentences", "doc_sentences"] = Field(
        "full_sentences",
        description="full: rows may cross document boundaries (full_sentences) or not (doc_sentences)")
    full_packing: Literal["sentences", "tokens"] = Field(
        "sentences",
        description="full: whole sentences per row (RoBERTa), or every row filled to max_seq_length, cutting sentences "
                    "(group_texts)")
    max_seq_length: int = Field(128, ge=8, le=65536, description="Tokens per row, [CLS] and [SEP] included")
    masked_lm_prob: float = Field(0.15, gt=0, lt=1, description="Fraction of tokens chosen for MLM prediction")
    max_predictions_per_seq: int = Field(20, ge=1, description="Cap on masked positions per row")
    whole_word: bool = Field(False, description="Mask all WordPiece pieces of a word together")
    masking: Literal["static", "dynamic"] = Field(
        "static", description="static: masks written into the shards; dynamic: fresh masks drawn at load time")
    dupe_factor: int = Field(1, ge=1, description="Static masking: copies of the data with different masks")
    short_seq_prob: float = Field(0.1, ge=0, le=1, description="nsp: probability of a shorter target length")
    seed: int = Field(12345, description="Seed of sentence packing, masking and shuffling (same seed, same shards)")
    num_workers: int = Field(2, ge=1, description="Processes over corpus shards; the output does not depend on it")
    rows_per_shard: int = Field(262144, ge=1, description="Rows per output Parquet shard")
    unit_mb: float = Field(
        8.0, gt=0,
        description="Text per work unit (whole docs of a corpus shard, MiB); the output depends on it, not on "
                    "num_workers")
    row_group_rows: int = Field(
        4096, ge=1, description="Rows per Parquet row group of the output (the reader's read granularity)")
    compression: Literal["zstd", "snappy", "none"] = Field(
        "zstd", description="Parquet compression of the output shards")

    @field_validator("dupe_factor")
    @classmethod
    def _dupes_need_static(cls, dupe_factor: int, info: ValidationInfo) -> int:
        if dupe_factor > 1 and info.data.get("masking") == "dynamic":
            raise ValueError("> 1 needs mask.masking=static (dynamic masking draws fresh masks at every read)")
        return dupe_factor
