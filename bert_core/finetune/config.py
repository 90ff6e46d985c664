"""Typed configuration of fine-tuning (sequence or token classification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertflow.bert_core.configtools import check


@dataclass(frozen=True)
class FinetuneConfig:
    task: Literal["sequence", "token"] = "sequence"
    train_path: str = "data/labeled/train.csv"  # Parquet, CSV/TSV or CoNLL file
    valid_path: str | None = None  # None: split valid_fraction off the training data (seeded)
    text_column: str = "text"  # token task: a list<string> of words, or one string split on whitespace
    text_pair_column: str | None = None  # second segment for sentence-pair tasks
    label_column: str = "label"  # token task: a list<string> of tags, or one string split on whitespace
    conll_tag_field: int = -1  # CoNLL files: which whitespace-separated field holds the tag (-1: the last)
    base_model: str | None = None  # local HF BERT dir; None: the pipeline's pretrained checkpoint
    allow_pickle_weights: bool = False  # also load a pickle checkpoint (pytorch_model.bin); only for files you trust
    max_length: int = 128
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128  # inference batches (validation, export check)
    lr: float = 5e-5
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0  # gradient clipping; 0: off
    early_stopping_patience: int = 2  # epochs without improvement of the validation metric (0: never stop early)
    valid_fraction: float = 0.1
    max_steps: int | None = None  # cap on optimizer steps (smoke runs); None: the epochs decide
    budget_minutes: float | None = None  # wall-clock cap on training; the best epoch so far is kept
    bucket_batches: int = 50  # length bucketing: sort by length within chunks of this many batches
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA for training and validation; final predictions in fp32
    num_threads: int = 0  # torch CPU threads; 0: every core this process may use
    log_every: int = 20  # optimizer steps between on_metrics/on_progress calls
    registered_model_name: str = "bertflow-classifier"

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "finetune.epochs must be >= 1")
        check(self.batch_size >= 1, "finetune.batch_size must be >= 1")
        check(self.eval_batch_size >= 1, "finetune.eval_batch_size must be >= 1")
        check(self.lr > 0, "finetune.lr must be > 0")
        check(self.weight_decay >= 0, "finetune.weight_decay must be >= 0")
        check(self.max_grad_norm >= 0, "finetune.max_grad_norm must be >= 0 (0 turns clipping off)")
        check(0.0 < self.valid_fraction < 1.0, "finetune.valid_fraction must be in (0, 1)")
        check(0.0 <= self.warmup_ratio < 1.0, "finetune.warmup_ratio must be in [0, 1)")
        check(self.max_length >= 8, "finetune.max_length must be >= 8")
        check(self.early_stopping_patience >= 0, "finetune.early_stopping_patience must be >= 0")
        check(self.max_steps is None or self.max_steps >= 1, "finetune.max_steps must be >= 1 (or null)")
        check(self.budget_minutes is None or self.budget_minutes > 0, "finetune.budget_minutes must be > 0")
        check(self.bucket_batches >= 1, "finetune.bucket_batches must be >= 1")
        check(self.num_threads >= 0, "finetune.num_threads must be >= 0 (0: all cores)")
        check(self.log_every >= 1, "finetune.log_every must be >= 1")
        check(self.text_column != self.label_column, "finetune.text_column and label_column must differ")
