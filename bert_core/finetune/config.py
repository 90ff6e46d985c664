"""Typed configuration of fine-tuning (sequence or token classification, extractive question answering)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from bertflow.bert_core.configtools import Config, PathStr


class FinetuneConfig(Config):
    section = "finetune"

    task: Literal["sequence", "token", "qa"] = Field(
        "sequence", description="sequence: one label per text; token: one tag per word (e.g. NER); "
                                "qa: extractive question answering (SQuAD)")
    train_path: PathStr = Field(
        "data/labeled/train.csv",
        description="Training data: Parquet, CSV/TSV or CoNLL file; qa: SQuAD JSON (v1.1/v2.0), JSONL or Parquet")
    valid_path: PathStr | None = Field(
        None, description="Validation data; null: split valid_fraction off the training data (seeded; "
                          "qa: whole articles, or contexts when there are no titles)")
    text_column: str = Field(
        "text", description="Text column; token task: a list<string> of words, or one string split on whitespace")
    text_pair_column: str | None = Field(None, description="Second segment for sentence-pair tasks")
    label_column: str = Field(
        "label", description="Label column; token task: a list<string> of tags, or one string split on whitespace")
    question_column: str = Field("question", min_length=1, description="qa, JSONL/Parquet rows: the question")
    context_column: str = Field("context", min_length=1, description="qa, JSONL/Parquet rows: the passage")
    answers_column: str = Field(
        "answers", min_length=1,
        description="qa, JSONL/Parquet rows: answers as {text: [...], answer_start: [...]}; empty: unanswerable")
    doc_stride: int = Field(
        128, ge=0, description="qa: tokens shared by consecutive windows of a context longer than max_length")
    max_answer_length: int = Field(30, ge=1, description="qa: tokens per predicted answer at most")
    conll_tag_field: int = Field(
        -1, description="CoNLL files: which whitespace-separated field holds the tag (-1: the last)")
    base_model: PathStr | None = Field(
        None, description="Local HF BERT dir to fine-tune; null: the pipeline's pretrained checkpoint")
    allow_pickle_weights: bool = Field(
        False, description="Also load a pickle checkpoint (pytorch_model.bin); only for files you trust")
    max_length: int = Field(
        128, ge=8, description="Tokens per example; longer ones are truncated (qa: windows of the context)")
    label_pieces: Literal["all", "first"] = Field(
        "all", description="token task: train the tag on every word piece (B-X continues as I-X), so bulk scoring "
                           "of plain text with per-piece spans (aggregation simple) finds whole entities; first: "
                           "only each word's first piece, as BERT's paper (entity_f1 is per word either way; all also reports "
                           "piece_entity_f1, the figure aggregation simple reaches)")
    epochs: int = Field(3, ge=1, description="Passes over the training data")
    batch_size: int = Field(32, ge=1, description="Training examples per optimizer step")
    eval_batch_size: int = Field(128, ge=1, description="Inference batch size (validation, export check)")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate (after warmup, then linear decay)")
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay (not applied to biases and LayerNorm weights)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the training steps spent warming up")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0: off")
    early_stopping_patience: int = Field(
        2, ge=0,
        description="Epochs without improvement of the validation metric before stopping (0: never stop early)")
    valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the training data held out for validation when valid_path is null")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimizer steps (smoke runs); null: the epochs decide")
    budget_minutes: float | None = Field(
        None, gt=0, description="Wall-clock cap on training; the best epoch so far is kept")
    bucket_batches: int = Field(
        50, ge=1, description="Length bucketing: sort by length within chunks of this many batches")
    seed: int = Field(42, description="Seed of the validation split, data order, dropout and head init")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    bf16: bool = Field(True, description="bf16 autocast on CUDA for training and validation; final predictions in fp32")
    cpu_bf16: bool = Field(
        False, description="bf16 autocast for training and validation on CPUs with native bf16 (AVX-512 BF16, AMX): "
        "MiniLM trains ~1.5x faster on such a CPU; final predictions in fp32. An error on other CPUs")
    num_threads: int = Field(0, ge=0, description="torch CPU threads; 0: every core this process may use")
    log_every: int = Field(20, ge=1, description="Optimizer steps between metric and progress reports")
    registered_model_name: str = Field(
        "bertflow-classifier", description="MLflow registered model the fine-tuned classifier is logged under")

    @field_validator("label_column")
    @classmethod
    def _label_is_not_text(cls, label_column: str, info: ValidationInfo) -> str:
        if label_column == info.data.get("text_column"):
            raise ValueError(f"must differ from finetune.text_column (both are {label_column!r})")
        return label_column
