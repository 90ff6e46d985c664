"""Typed configuration of masked-data generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertflow.bert_core.configtools import check


@dataclass(frozen=True)
class MaskConfig:
    recipe: Literal["full", "nsp"] = "full"  # RoBERTa packed sequences, or BERT segment pairs with NSP
    full_mode: Literal["full_sentences", "doc_sentences"] = "full_sentences"  # cross documents or not
    # full: whole sentences per row (RoBERTa), or every row filled to max_seq_length, cutting sentences (group_texts)
    full_packing: Literal["sentences", "tokens"] = "sentences"
    max_seq_length: int = 128
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word: bool = False  # mask all WordPiece pieces of a word together
    masking: Literal["static", "dynamic"] = "static"  # static: masks in the shards; dynamic: at load time
    dupe_factor: int = 1  # static masking: copies of the data with different masks
    short_seq_prob: float = 0.1  # nsp: probability of a shorter target length
    seed: int = 12345
    num_workers: int = 2  # processes over corpus shards; output does not depend on it
    rows_per_shard: int = 262144
    unit_mb: float = 8.0  # text per work unit (whole docs of a corpus shard); output depends on it, not on num_workers
    row_group_rows: int = 4096  # rows per Parquet row group of the output (the reader's read granularity)
    compression: Literal["zstd", "snappy", "none"] = "zstd"  # Parquet compression of the output shards

    def __post_init__(self) -> None:
        check(8 <= self.max_seq_length <= 65536, "mask.max_seq_length must be in [8, 65536]")
        check(0.0 < self.masked_lm_prob < 1.0, "mask.masked_lm_prob must be in (0, 1)")
        check(self.max_predictions_per_seq >= 1, "mask.max_predictions_per_seq must be >= 1")
        check(self.dupe_factor >= 1, "mask.dupe_factor must be >= 1")
        check(
            self.masking == "static" or self.dupe_factor == 1,
            "mask.dupe_factor > 1 needs mask.masking=static (dynamic masking draws fresh masks at every read)",
        )
        check(0.0 <= self.short_seq_prob <= 1.0, "mask.short_seq_prob must be in [0, 1]")
        check(self.num_workers >= 1, "mask.num_workers must be >= 1")
        check(self.rows_per_shard >= 1, "mask.rows_per_shard must be >= 1")
        check(self.unit_mb > 0, "mask.unit_mb must be > 0")
        check(self.row_group_rows >= 1, "mask.row_group_rows must be >= 1")
