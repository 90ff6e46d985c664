"""Typed configuration of the WordPiece vocabulary stage."""

from __future__ import annotations

from pydantic import Field

from bertflow.bert_core.configtools import Config


class VocabConfig(Config):
    section = "vocab"

    vocab_size: int = Field(30522, ge=100, description="Target WordPiece vocabulary size, special tokens included")
    min_frequency: int = Field(2, ge=1, description="A merge must occur at least this often in the training text")
    limit_alphabet: int = Field(
        1000, ge=1, description="At most this many distinct initial characters (the rarest become [UNK])")
    lowercase: bool = Field(True, description="Lowercase and strip accents before training (an uncased vocabulary)")
    max_docs: int | None = Field(
        None, ge=1, description="Sampling cap: train on at most this many documents (null: no cap)")
    max_bytes: int | None = Field(
        None, ge=1, description="Sampling cap: train on at most this many bytes of text (null: no cap)")
    holdout_docs: int = Field(200, ge=0, description="Documents kept aside to measure UNK rate and tokens per word")
    holdout_max_fraction: float = Field(
        0.1, ge=0, lt=1, description="Never hold out more than this fraction of the corpus's documents")
    holdout_eval_chars: int = Field(
        1_000_000, ge=1, description="Coverage stats read at most this many characters of the held-out docs")
    model_max_length: int = Field(
        512, ge=8, description="Written to tokenizer_config.json (the model's position limit)")
    batch_rows: int = Field(256, ge=1, description="Rows per Parquet record batch fed to the trainer")
