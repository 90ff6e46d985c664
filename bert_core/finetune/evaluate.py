"""Turn model outputs on the validation set into metrics and a predictions table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertflow.bert_core.finetune.examples import Examples, TaggedExamples, TextExamples
from bertflow.bert_core.finetune.infer import SequenceOutputs, TokenOutputs
from bertflow.bert_core.finetune.metrics import classification_report, entity_report

HEADLINE = {"sequence": "accuracy", "token": "entity_f1", "qa": "f1"}  # the metric early stopping and promotion use


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]] | None
    outputs: SequenceOutputs | TokenOutputs

    @property
    def headline(self) -> float:
        return self.metrics["eval_metric"]


def evaluate(examples: Examples, outputs: SequenceOutputs | TokenOutputs, label_names: Sequence[str],
             piece_level: bool = False) -> Evaluation:
    """Validation metrics; ``piece_level`` (a token model trained on every word piece) adds ``piece_entity_*``."""
    if isinstance(examples, TextExamples):
        index = {n: i for i, n in enumerate(label_names)}
        gold = [index[y] for y in examples.labels]
        rep = classification_report(gold, outputs.pred, label_names)
        metrics = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "eval_metric": rep["accuracy"]}
        return Evaluation(metrics, rep["per_class"], rep["confusion_matrix"], outputs)
    pred_tags = [[label_names[i] for i in p] for p in outputs.pred]
    rep = entity_report(examples.tags, pred_tags)
    metrics = {
        "entity_precision": rep["precision"],
        "entity_recall": rep["recall"],
        "entity_f1": rep["f1"],
        "token_accuracy": rep["token_accuracy"],
        "eval_metric": rep["f1"],
    }
    if piece_level:
        metrics.update(_piece_metrics(outputs, label_names))
    return Evaluation(metrics, rep["per_type"], None, outputs)


def _piece_metrics(outputs: TokenOutputs, label_names: Sequence[str]) -> dict[str, float]:
    """Entity figures over every labelled word piece rather than each word's first piece.

    Why: a model trained on every piece (``label_pieces: all``) is read piece by piece by
    ``score.aggregation: simple`` and transformers' pipeline of the same name, which can split a
    word whose pieces disagree (``Kan``/ORG ``##sai``/LOC). This is the figure those spans reach
    (transformers' ``run_ner`` reports it with ``label_all_tokens``); ``entity_f1`` is what
    ``first`` reaches. The gap between the two measures how often the model's pieces disagree.
    """
    if outputs.piece_gold is None or outputs.piece_pred is None:
        raise ValueError("piece-level figures need TokenOutputs from labelled pieces (infer over an encoding with labels)")
    gold = [[label_names[i] for i in g] for g in outputs.piece_gold]
    pred = [[label_names[i] for i in p] for p in outputs.piece_pred]
    rep = entity_report(gold, pred)
    return {"piece_entity_precision": rep["precision"], "piece_entity_recall": rep["recall"],
            "piece_entity_f1": rep["f1"]}


def predictions_table(examples: Examples, outputs: SequenceOutputs | TokenOutputs, label_names: Sequence[str]):
    """One row per validation example: inputs, gold, prediction (and its probability)."""
    import pyarrow as pa

    n = len(examples)
    if isinstance(examples, TaggedExamples):
        return pa.table(
            {
                "row": pa.array(np.arange(n), pa.int64()),
                "words": pa.array(examples.words, pa.list_(pa.string())),
                "tags": pa.array(examples.tags, pa.list_(pa.string())),
                "pred_tags": pa.array([[label_names[i] for i in p] for p in outputs.pred], pa.list_(pa.string())),
                "scores": pa.array([s.tolist() for s in outputs.score], pa.list_(pa.float32())),
            }
        )
    cols = {"row": pa.array(np.arange(n), pa.int64()), "text": pa.array(examples.texts, pa.string())}
    if examples.pairs is not None:
        cols["text_pair"] = pa.array(examples.pairs, pa.string())
    cols["label"] = pa.array(examples.labels, pa.string())
    cols["pred"] = pa.array([label_names[i] for i in outputs.pred], pa.string())
    cols["score"] = pa.array(outputs.score, pa.float32())
    cols["correct"] = pa.array([g == label_names[p] for g, p in zip(examples.labels, outputs.pred)], pa.bool_())
    return pa.table(cols)


PREDICTIONS = "predictions.parquet"  # beside the exported model/ in the fine-tune stage's output


def labelled_validation(model_dir: str | Path):
    """The labelled validation set a fine-tuned sequence classifier was evaluated on: ``text``
    (, ``text_pair``), ``label`` from :data:`PREDICTIONS` beside ``model_dir``; None when there is none
    (a model from elsewhere, a registry download, a token or QA model)."""
    import pyarrow.parquet as pq

    path = Path(model_dir).parent / PREDICTIONS
    if not path.is_file():
        return None
    names = pq.read_schema(path).names
    if "text" not in names or "label" not in names:
        return None
    return pq.read_table(path, columns=[c for c in ("text", "text_pair", "label") if c in names])
