"""Typed configuration of bulk scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bert_core.configtools import check


@dataclass(frozen=True)
class ScoreConfig:
    input: str = "data/lake"  # Parquet file, directory, glob or hive-partitioned lake
    text_column: str = "text"
    text_pair_column: str | None = None
    key_columns: tuple[str, ...] | None = None  # None: carry every non-text column
    filter: str | None = None  # row filter, e.g. "lang = 'en'" (validated, values bound)
    model_uri: str | None = None  # models:/name@alias, runs:/..., or a local HF dir; None: the pipeline's
    batch_size: int = 64
    max_length: int = 128
    probabilities: bool = False  # add a per-class probability column
    embeddings: Literal["none", "cls", "mean"] = "none"
    device: str = "auto"
    bf16: bool = True
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "score.batch_size must be >= 1")
        check(self.max_length >= 8, "score.max_length must be >= 8")
