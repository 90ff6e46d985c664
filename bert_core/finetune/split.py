"""Seeded validation split off the training data, stratified by label when there is one per example."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertflow.bert_core.errors import InputError


def split_indices(
    n: int, fraction: float, seed: int, strata: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train_idx, valid_idx)``.

    With ``strata`` each label contributes ``round(fraction * count)`` examples to
    validation, but always leaves at least one in training, so every label keeps
    examples to learn from. At least one example goes to validation.
    """
    if n < 2:
        raise InputError(f"need at least 2 training examples to split off a validation set, got {n}")
    rng = np.random.default_rng(seed)
    if strata is None:
        perm = rng.permutation(n)
        k = min(n - 1, max(1, int(round(fraction * n))))
        valid = perm[:k]
    else:
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(strata):
            groups.setdefault(s, []).append(i)
        picked = []
        for key in sorted(groups):
            idx = np.asarray(groups[key])
            k = min(len(idx) - 1, int(round(fraction * len(idx))))
            if k > 0:
                picked.append(rng.permutation(idx)[:k])
        valid = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
        if len(valid) == 0:
            valid = rng.permutation(n)[:1]
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def split_groups(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_idx, valid_idx)`` with whole groups on one side: ``round(fraction * groups)`` groups
    (at least one, and at least one left to train on) go to validation.

    Question answering splits by article (or context): questions about one passage share
    it, so a split by question would let validation peek at training passages.
    """
    names = sorted(set(groups))
    if len(names) < 2:
        raise InputError(f"need at least 2 articles (or contexts) to split off a validation set, got {len(names)}; "
                         "give finetune.valid_path")
    rng = np.random.default_rng(seed)
    k = min(len(names) - 1, max(1, int(round(fraction * len(names)))))
    held = {names[i] for i in rng.permutation(len(names))[:k]}
    mask = np.fromiter((g in held for g in groups), dtype=bool, count=len(groups))
    return np.flatnonzero(~mask), np.flatnonzero(mask)
