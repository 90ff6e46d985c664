"""Typed configuration of the WordPiece vocabulary stage."""

from __future__ import annotations

from dataclasses import dataclass

from bert_core.configtools import check


@dataclass(frozen=True)
class VocabConfig:
    vocab_size: int = 30522
    min_frequency: int = 2
    limit_alphabet: int = 1000
    lowercase: bool = True
    max_docs: int | None = None  # sampling cap: train on at most this many documents
    max_bytes: int | None = None  # sampling cap: train on at most this many bytes of text
    holdout_docs: int = 200  # documents kept aside to measure UNK rate and tokens per word

    def __post_init__(self) -> None:
        check(self.vocab_size >= 100, "vocab.vocab_size must be >= 100")
        check(self.min_frequency >= 1, "vocab.min_frequency must be >= 1")
        check(self.limit_alphabet >= 1, "vocab.limit_alphabet must be >= 1")
