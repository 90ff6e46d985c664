"""The heads bulk scoring knows (sequence, token, qa), behind one small interface.

A head says which input columns it reads, which output columns it adds, how a window
of rows becomes model batches (:meth:`Head.encode`, on the tokenizer thread), what of
the model's output comes back to the host (:meth:`Head.outputs`, on the model thread)
and how those arrays become output columns (:meth:`Head.columns`, on the writer
thread). Everything else (reading, filtering, bad rows, batching, the writer, the
commit) is one code path for every head.

Which head: ``score.head``, or (``auto``) the model directory's: bertflow's export
marker (``bertflow_finetune.json``: ``task``), else ``config.json``'s architectures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from bertflow.bert_core.score.config import ScoreConfig

if TYPE_CHECKING:  # torch stays out of planning
    import torch

    from bertflow.bert_core.score.encode import EncodedWindow
    from bertflow.bert_core.score.model import Classifier

HEADS = ("sequence", "token", "qa")
COMMON = ("model_uri", "model_version", "error")  # added by every head, after its own columns


def head_name(cfg: ScoreConfig, model_dir: str | Path | None) -> str:
    """``cfg.head``, or the model's own head (sequence when there is no model to ask)."""
    if cfg.head != "auto":
        return cfg.head
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return "sequence"
    from bertflow.bert_core.finetune.export import read_meta

    return str(read_meta(model_dir).get("task", "sequence"))


def input_columns(cfg: ScoreConfig, head: str) -> list[tuple[str, str]]:
    """``(config key, column)`` of the input columns ``head`` reads, in the order it reads them."""
    if head == "qa":
        return [("score.question_column", cfg.question_column), ("score.context_column", cfg.context_column)]
    cols = [("score.text_column", cfg.text_column)]
    if head == "sequence" and cfg.text_pair_column is not None:
        cols.append(("score.text_pair_column", cfg.text_pair_column))
    return cols


_ADDED = {
    "sequence": ("label", "score", "probabilities", "embedding"),
    "token": ("entities", "tokens", "tags"),
    "qa": ("answer", "answer_start", "answer_end", "score"),
}


def added_names(cfg: ScoreConfig, head: str = "sequence") -> list[str]:
    """Every output column ``head`` may add (with ``cfg.output_prefix``): input columns must not clash with them."""
    return [cfg.output_prefix + n for n in (*_ADDED[head], *COMMON)]


class Head(ABC):
    """One kind of prediction; built once per loaded model (:func:`make_head`)."""

    name: ClassVar[str]
    windowed: ClassVar[bool] = False  # long texts become several model windows (else: truncated)

    def __init__(self, cfg: ScoreConfig, clf: Classifier) -> None:
        self.cfg, self.clf, self.meta = cfg, clf, clf.meta

    @abstractmethod
    def fields(self) -> list[pa.Field]:
        """The output columns this head adds (unprefixed names), before ``model_uri``, ``model_version``, ``error``."""

    @abstractmethod
    def encode(self, batch: pa.RecordBatch, inputs: tuple[str, ...], pin: bool) -> EncodedWindow:
        """A window of rows -> validated rows and padded model batches (``inputs``: the input column names)."""

    @abstractmethod
    def outputs(self, out: Any, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What of a forward's output comes back to the host (float32 tensors, batch first)."""

    @abstractmethod
    def columns(self, enc: EncodedWindow, results: list[tuple[Any, tuple]]) -> list[pa.Array]:
        """The head's output columns for a window; ``results``: (batch rows, host arrays) per model batch."""

    def check(self) -> None:
        """Refuse settings this head cannot honour (an InputError naming the key)."""

    def needs_hidden_states(self) -> bool:
        return False


def make_head(cfg: ScoreConfig, clf: Classifier) -> Head:
    """The head of ``clf`` set up for ``cfg`` (one per file: it holds the run's settings); InputError for bad ones."""
    from bertflow.bert_core.errors import InputError

    name = clf.head
    if name == "token":
        from bertflow.bert_core.score.head_token import TokenHead as cls
    elif name == "qa":
        from bertflow.bert_core.score.head_qa import QaHead as cls
    else:
        from bertflow.bert_core.score.head_sequence import SequenceHead as cls
    try:
        head = cls(cfg, clf)
    except ValueError as exc:  # settings the head cannot work with (a stride too long for the window)
        raise InputError(f"score ({name} head): {exc}") from None
    head.check()
    return head


def auto_class(name: str) -> str:
    return {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
            "qa": "AutoModelForQuestionAnswering"}[name]
