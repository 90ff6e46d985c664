"""Typed configuration of bulk scoring."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from bertflow.bert_core.configtools import Config, PathStr, Strings

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ScoreConfig(Config):
    section = "score"

    input: PathStr = Field(
        "data/lake", description="Parquet file, directory, glob or hive-partitioned lake to score (local or s3://...)")
    output: PathStr | None = Field(
        None, description="Where the scored lake is written (local or s3://...); null: <workspace>/score/<job>")
    job: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="Name of this scoring job (its default output folder); null: the input's name + a hash of it")
    overwrite: bool = Field(
        False, description="Replace an output that holds another input's results (else such a run is refused)")
    head: Literal["auto", "sequence", "token", "qa"] = Field(
        "auto", description="What the model predicts: auto (from its config: architectures, bertflow's export "
                            "marker), sequence (a label per row), token (entity spans), qa (an answer span)")
    text_column: str = Field("text", min_length=1, description="Column holding the text to classify (sequence, token)")
    text_pair_column: str | None = Field(None, description="Second text column for sentence-pair models")
    question_column: str = Field("question", min_length=1, description="qa head: the column holding the question")
    context_column: str = Field("context", min_length=1, description="qa head: the column holding the passage")
    key_columns: Strings | None = Field(
        None, description="Input columns carried into the output; null: every non-text column")
    where: str | None = Field(
        None, description="SQL condition on columns and hive partition keys, e.g. dt >= '2026-11-02' AND lang = 'en'; "
                          "pushed down (partitions pruned by path, row groups by statistics); score.filter is its "
                          "old name")
    model_uri: PathStr | None = Field(
        None, description="models:/name@alias, runs:/..., or a local HF dir; null: the pipeline's fine-tuned model")
    allow_pickle_weights: bool = Field(
        False, description="Also load a pickle checkpoint (pytorch_model.bin); only for files you trust")
    batch_size: int = Field(64, ge=1, description="Rows per model forward pass")
    max_batch_tokens: int | None = Field(
        None, ge=0, description="Padded tokens (rows x longest row) per forward pass at most, so batches of long "
                                "texts hold fewer rows and less padding; null: 1024 on CPUs (small batches stay in "
                                "their caches: faster), no cap on GPUs (they want wide batches); 0: no cap")
    max_length: int = Field(
        128, ge=8, description="Tokens per model window; sequence head: longer texts are truncated; token and qa "
                               "heads: longer texts are scored in overlapping windows")
    stride: int = Field(
        32, ge=0, description="token and qa heads: tokens shared by consecutive windows of a long text")
    max_windows: int = Field(
        64, ge=1, description="token and qa heads: windows per row at most; the rest of a longer text is cut "
                              "(flagged truncated)")
    aggregation: Literal["simple", "first", "max", "average"] = Field(
        "simple", description="token head: how word pieces become entities (as transformers' "
                              "aggregation_strategy): simple (per piece), first, max or average (per word)")
    tokens: bool = Field(False, description="token head: add the tokens and their tags (debugging)")
    max_answer_length: int | None = Field(
        None, ge=1, description="qa head: tokens per answer at most; null: the model's own (fine-tuning), else 30")
    null_threshold: float | None = Field(
        None, description="qa head, SQuAD 2.0 models: no answer when the [CLS] score beats the best span's by more "
                          "than this; null: the threshold chosen on validation at fine-tuning")
    probabilities: bool = Field(False, description="Add a per-class probability column")
    embeddings: Literal["none", "cls", "mean"] = Field(
        "none", description="Add an embedding column: the [CLS] vector, the mean of the tokens, or none")
    device: str = Field("auto", description="auto | cpu | mps | cuda | cuda:N")
    bf16: bool = Field(True, description="bf16 weights on CUDA; the CPU path always runs fp32")
    runner: Literal["local", "ray"] = Field("local", description="Score files in this process, or in parallel on Ray")
    ray_address: str | None = Field(None, description="Ray cluster to join (e.g. ray://head:10001); null: a local Ray")
    sort_window: int = Field(
        16, ge=1, description="Batches per length-sorting window (1: no sorting); rows keep their order in the output")
    read_batch_rows: int = Field(
        8192, ge=1, description="Rows per Parquet record batch read (memory stays flat whatever the file size)")
    prefetch_windows: int = Field(
        2, ge=1, description="Tokenized windows queued ahead of the model (bounded, so memory stays flat)")
    cpu_threads: int = Field(
        0, ge=0, description="torch (and ONNX Runtime) threads while scoring on CPU; 0: every core this process "
                             "may use")
    backend: Literal["torch", "torch-bf16", "onnx", "onnx-int8"] = Field(
        "torch", description="What runs the model: torch (any device); torch-bf16 (torch with bf16 weights on a CPU "
                             "that multiplies bf16 natively: AVX-512 BF16 or AMX; about 2x fp32 there); or ONNX "
                             "Runtime on the CPU: onnx (fp32) or onnx-int8 (linear layers quantized to int8). All "
                             "but torch pass a parity gate against torch fp32 before scoring anything")
    parity_rows: int = Field(
        512, ge=1, description="gated backends: rows of the parity gate's slice (the fine-tune's labelled validation "
                               "set beside the model when there is one, else the first rows of the input)")
    max_metric_drop: float = Field(
        1.0, ge=0, description="gated backends: refuse to score when the gate's metric (accuracy, in points) falls "
                               "more than this below torch fp32's (only when the slice has labels)")
    min_agreement: float = Field(
        0.97, ge=0, le=1, description="gated backends: refuse to score when fewer than this share of the gate's "
                                      "predictions equal torch fp32's (flips near the decision boundary are normal)")
    non_string_text: Literal["error", "cast"] = Field(
        "error", description="A non-string text column: a per-row error, or cast numbers to text")
    output_prefix: str = Field(
        "", pattern=r"^[A-Za-z0-9_]*$",
        description="Prefix of the added columns (label, score, ...) when the input already uses those names")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field("zstd", description="Parquet codec of the output")
    row_group_rows: int = Field(65536, ge=1, description="Output rows per Parquet row group (also flushed at 64 MiB)")
    input_fingerprint: Literal["footer", "content"] = Field(
        "footer",
        description="How inputs are fingerprinted for reuse: size + Parquet footer (cheap), or sha256 of the content")

    @model_validator(mode="before")
    @classmethod
    def _filter_is_where(cls, data: Any) -> Any:
        """``score.filter`` (the old name) still works, as ``score.where``."""
        if isinstance(data, dict) and "filter" in data:
            data = dict(data)
            old = data.pop("filter")
            if data.get("where") not in (None, old):
                raise ValueError("score.filter is the old name of score.where; set only score.where")
            data["where"] = old
        return data

    @field_validator("input", "output")
    @classmethod
    def _no_credentials(cls, spec: str | None) -> str | None:
        """Refused here, before the config is logged anywhere: a URI never carries a secret."""
        from bertflow.bert_core.errors import InputError
        from bertflow.bert_core.storage import refuse_credentials

        if spec is not None:
            try:
                refuse_credentials(spec)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return spec

    @field_validator("where")
    @classmethod
    def _where_is_allowed_sql(cls, text: str | None) -> str | None:
        """Syntax and the allowed forms are checked when the config loads; columns and types per file, later."""
        from bertflow.bert_core.errors import InputError
        from bertflow.bert_core.score.where import parse_where

        try:
            parse_where(text, key="")
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return text

    @field_validator("text_pair_column")
    @classmethod
    def _pair_is_not_text(cls, pair: str | None, info: ValidationInfo) -> str | None:
        if pair is not None and pair == info.data.get("text_column"):
            raise ValueError(f"must differ from score.text_column (both are {pair!r})")
        return pair

    @field_validator("context_column")
    @classmethod
    def _context_is_not_question(cls, context: str, info: ValidationInfo) -> str:
        if context == info.data.get("question_column"):
            raise ValueError(f"must differ from score.question_column (both are {context!r})")
        return context

    @field_validator("key_columns")
    @classmethod
    def _keys_once(cls, keys: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if keys is not None and len(set(keys)) != len(keys):
            raise ValueError("lists a column twice")
        return keys

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"{device!r} must be auto, cpu, mps, cuda or cuda:N")
        return device

    @field_validator("backend")
    @classmethod
    def _onnx_runs_on_the_cpu(cls, backend: str, info: ValidationInfo) -> str:
        device = info.data.get("device", "auto")
        if backend != "torch" and device not in ("auto", "cpu"):
            raise ValueError(f"{backend} runs on the CPU, but score.device is "
                             f"{device!r}: set score.device to cpu or auto, or score.backend to torch")
        return backend


ONNX_BACKENDS = ("onnx", "onnx-int8")  # the backends whose model is an exported file in the cache folder


CPU_BATCH_TOKENS = 1024  # benchmarks/RESULTS.md: 1.2-1.75x the rows/s of 8192 on every head (2-core CPU)


def batch_token_cap(cfg: ScoreConfig, device_type: str) -> int:
    """``score.max_batch_tokens`` resolved for a device (0: no cap)."""
    if cfg.max_batch_tokens is not None:
        return cfg.max_batch_tokens
    return CPU_BATCH_TOKENS if device_type == "cpu" else 0
