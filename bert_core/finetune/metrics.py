"""Evaluation metrics with no dependency beyond numpy.

Classification: accuracy, macro-F1 and per-class precision/recall/F1 as scikit-learn
computes them (macro over the classes present in the gold labels or the predictions;
0 where a ratio is undefined). NER: entity-level precision/recall/F1 exactly as
``seqeval`` computes them in its default (conlleval-compatible) mode — chunks are
extracted with the same begin/end rules, so an ``I-X`` after ``O`` starts an entity —
reimplemented here because the GPU machine has no seqeval.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """``cm[i, j]`` = examples with gold label i predicted as j."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(np.float64)
    pred_sum = cm.sum(axis=0).astype(np.float64)
    true_sum = cm.sum(axis=1).astype(np.float64)
    precision = _divide(tp, pred_sum)
    recall = _divide(tp, true_sum)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = (true_sum + pred_sum) > 0
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(true_sum[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.tolist(),
    }


# ---- NER (CoNLL chunks, seqeval default mode) ----------------------------------------------------


def _split_tag(chunk: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "_")``, as seqeval splits prefix and type."""
    return chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def get_entities(seq: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` chunks (end inclusive). A list of sentences is joined with an ``O``
    between them, so offsets are global and no entity spans two sentences."""
    if any(isinstance(s, (list, tuple)) for s in seq):
        seq = [tag for sentence in seq for tag in [*sentence, "O"]]
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = _split_tag(chunk)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def entity_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
    """Micro entity precision/recall/F1, per-type figures and token accuracy."""
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred)):
        raise ValueError("y_true and y_pred must have the same sentences and lengths")
    true_sets: dict[str, set] = defaultdict(set)
    pred_sets: dict[str, set] = defaultdict(set)
    for type_, s, e in get_entities([list(x) for x in y_true]):
        true_sets[type_].add((s, e))
    for type_, s, e in get_entities([list(x) for x in y_pred]):
        pred_sets[type_].add((s, e))
    per_type = {}
    tp_all = pred_all = true_all = 0
    for type_ in sorted(set(true_sets) | set(pred_sets)):
        tp = len(true_sets[type_] & pred_sets[type_])
        np_, nt = len(pred_sets[type_]), len(true_sets[type_])
        per_type[type_] = {**_prf(tp, np_, nt), "support": nt}
        tp_all, pred_all, true_all = tp_all + tp, pred_all + np_, true_all + nt
    n_tokens = sum(len(t) for t in y_true)
    correct = sum(a == b for t, p in zip(y_true, y_pred) for a, b in zip(t, p))
    return {
        **_prf(tp_all, pred_all, true_all),
        "token_accuracy": correct / n_tokens if n_tokens else 0.0,
        "per_type": per_type,
    }


def _prf(tp: int, pred: int, true: int) -> dict[str, float]:
    p = tp / pred if pred else 0.0
    r = tp / true if true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
