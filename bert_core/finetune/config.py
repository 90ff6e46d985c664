"""Typed configuration of fine-tuning (sequence or token classification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bert_core.configtools import check


@dataclass(frozen=True)
class FinetuneConfig:
    task: Literal["sequence", "token"] = "sequence"
    train_path: str = "data/labeled/train.csv"  # Parquet, CSV/TSV or CoNLL file
    valid_path: str | None = None  # None: split valid_fraction off the training data (seeded)
    text_column: str = "text"
    text_pair_column: str | None = None  # second segment for sentence-pair tasks
    label_column: str = "label"
    base_model: str | None = None  # local HF BERT dir; None: the pipeline's pretrained checkpoint
    max_length: int = 128
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    early_stopping_patience: int = 2  # epochs without improvement of the validation metric
    valid_fraction: float = 0.1
    seed: int = 42
    device: str = "auto"
    bf16: bool = True
    registered_model_name: str = "bertflow-classifier"

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "finetune.epochs must be >= 1")
        check(self.batch_size >= 1, "finetune.batch_size must be >= 1")
        check(self.lr > 0, "finetune.lr must be > 0")
        check(0.0 < self.valid_fraction < 1.0, "finetune.valid_fraction must be in (0, 1)")
        check(0.0 <= self.warmup_ratio < 1.0, "finetune.warmup_ratio must be in [0, 1)")
        check(self.max_length >= 8, "finetune.max_length must be >= 8")
