"""Label maps: inferred from the training data, sorted for stability, saved with the model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from bertflow.bert_core.errors import InputError


def infer_label_names(values: Iterable[str]) -> list[str]:
    """The distinct labels, sorted: numerically when they all are integers ("2" before "10"), else as text."""
    names = set(values)
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def encode_labels(values: Sequence[str], names: Sequence[str], where: str) -> np.ndarray:
    """Map label strings to ids; a label outside ``names`` is an InputError naming it and ``where``."""
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for row, v in enumerate(values):
        i = index.get(v)
        if i is None:
            raise unseen_label_error(v, names, where, row)
        out[row] = i
    return out


def encode_tags(sentences: Sequence[Sequence[str]], names: Sequence[str], where: str) -> list[np.ndarray]:
    """Map each sentence's tags to ids (token task)."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for row, tags in enumerate(sentences):
        ids = np.empty(len(tags), dtype=np.int64)
        for j, t in enumerate(tags):
            i = index.get(t)
            if i is None:
                raise unseen_label_error(t, names, where, row)
            ids[j] = i
        out.append(ids)
    return out


def continuation_ids(names: Sequence[str], label_pieces: str) -> list[int] | None:
    """Per tag id, the tag a word's later word pieces learn (``label_pieces: all``); None: first piece only.

    A ``B-X`` word continues as ``I-X`` (so span decoding per piece, as transformers'
    ``aggregation_strategy="simple"`` does, keeps the word in one entity); ``I-X``, ``O`` and
    unprefixed tags continue as themselves; -100 (no label) where the ``I-`` tag is unknown.
    """
    if label_pieces == "first":
        return None
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        prefix, _, kind = name.partition("-")
        if kind and prefix in ("S", "E", "L", "U"):
            raise InputError(f"finetune.label_pieces: all needs IOB tags (B-, I-, O), but the labels include "
                             f"{name!r} (a BIOES/BILOU scheme); set finetune.label_pieces: first")
        out.append(index.get(f"I-{kind}", -100) if kind and prefix == "B" else i)
    return out


def unseen_label_error(label: str, names: Sequence[str], where: str, row: int) -> InputError:
    shown = ", ".join(map(repr, names[:20])) + (", ..." if len(names) > 20 else "")
    return InputError(
        f"{where}: label {label!r} (example {row}) does not occur in the training data, whose labels are {shown}; "
        "add training examples of it or drop those rows"
    )


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
