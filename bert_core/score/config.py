"""Typed configuration of bulk scoring."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bertflow.bert_core.configtools import check

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_PREFIX = re.compile(r"^[A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ScoreConfig:
    input: str = "data/lake"  # Parquet file, directory, glob or hive-partitioned lake
    text_column: str = "text"
    text_pair_column: str | None = None
    key_columns: tuple[str, ...] | None = None  # None: carry every non-text column
    filter: str | None = None  # row filter, e.g. "lang = 'en'" (validated, values bound)
    model_uri: str | None = None  # models:/name@alias, runs:/..., or a local HF dir; None: the pipeline's
    allow_pickle_weights: bool = False  # also load a pickle checkpoint (pytorch_model.bin); only for files you trust
    batch_size: int = 64
    max_length: int = 128
    probabilities: bool = False  # add a per-class probability column
    embeddings: Literal["none", "cls", "mean"] = "none"
    device: str = "auto"
    bf16: bool = True  # bf16 weights on CUDA; the CPU path always runs fp32
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    sort_window: int = 16  # batches per length-sorting window (1: no sorting); rows keep their order in the output
    read_batch_rows: int = 8192  # rows per Parquet record batch read (memory stays flat whatever the file size)
    prefetch_windows: int = 2  # tokenized windows queued ahead of the model (bounded, so memory stays flat)
    cpu_threads: int = 0  # torch threads while scoring on CPU; 0: usable cores - 1 (one left to the tokenizer)
    non_string_text: Literal["error", "cast"] = "error"  # non-string text column: per-row error, or cast numbers
    output_prefix: str = ""  # prefix of the added columns (label, score, ...) when the input already uses those names
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    row_group_rows: int = 65536  # output rows per Parquet row group (also flushed at 64 MiB)
    input_fingerprint: Literal["footer", "content"] = "footer"  # footer: size + Parquet footer (cheap); content: sha256

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "score.batch_size must be >= 1")
        check(self.max_length >= 8, "score.max_length must be >= 8")
        check(bool(self.text_column), "score.text_column must not be empty")
        check(self.text_pair_column != self.text_column, "score.text_pair_column must differ from score.text_column")
        check(self.key_columns is None or len(set(self.key_columns)) == len(self.key_columns),
              "score.key_columns lists a column twice")
        check(self.sort_window >= 1, "score.sort_window must be >= 1")
        check(self.read_batch_rows >= 1, "score.read_batch_rows must be >= 1")
        check(self.prefetch_windows >= 1, "score.prefetch_windows must be >= 1")
        check(self.cpu_threads >= 0, "score.cpu_threads must be >= 0 (0: torch's default)")
        check(self.row_group_rows >= 1, "score.row_group_rows must be >= 1")
        check(bool(_DEVICE.match(self.device)), f"score.device {self.device!r} must be auto, cpu, mps, cuda or cuda:N")
        check(bool(_PREFIX.match(self.output_prefix)),
              f"score.output_prefix {self.output_prefix!r} may hold only letters, digits and underscores")
