"""Typed configuration of the WordPiece vocabulary stage."""

from __future__ import annotations

from dataclasses import dataclass

from bertflow.bert_core.configtools import check


@dataclass(frozen=True)
class VocabConfig:
    vocab_size: int = 30522
    min_frequency: int = 2
    limit_alphabet: int = 1000
    lowercase: bool = True
    max_docs: int | None = None  # sampling cap: train on at most this many documents
    max_bytes: int | None = None  # sampling cap: train on at most this many bytes of text
    holdout_docs: int = 200  # documents kept aside to measure UNK rate and tokens per word
    holdout_max_fraction: float = 0.1  # never hold out more than this fraction of the corpus's documents
    holdout_eval_chars: int = 1_000_000  # coverage stats read at most this many characters of the held-out docs
    model_max_length: int = 512  # written to tokenizer_config.json (the model's position limit)
    batch_rows: int = 256  # rows per Parquet record batch fed to the trainer

    def __post_init__(self) -> None:
        check(self.vocab_size >= 100, "vocab.vocab_size must be >= 100")
        check(self.min_frequency >= 1, "vocab.min_frequency must be >= 1")
        check(self.limit_alphabet >= 1, "vocab.limit_alphabet must be >= 1")
        check(self.max_docs is None or self.max_docs >= 1, "vocab.max_docs must be >= 1 (or null for no cap)")
        check(self.max_bytes is None or self.max_bytes >= 1, "vocab.max_bytes must be >= 1 (or null for no cap)")
        check(self.holdout_docs >= 0, "vocab.holdout_docs must be >= 0")
        check(0 <= self.holdout_max_fraction < 1, "vocab.holdout_max_fraction must be in [0, 1)")
        check(self.holdout_eval_chars >= 1, "vocab.holdout_eval_chars must be >= 1")
        check(self.model_max_length >= 8, "vocab.model_max_length must be >= 8")
        check(self.batch_rows >= 1, "vocab.batch_rows must be >= 1")
