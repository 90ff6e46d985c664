"""SQuAD exact match and F1, with the official evaluation scripts' normalisation and rules (0-100 scale).

Answers are compared after lower-casing, dropping punctuation and the articles a/an/the,
and collapsing whitespace; F1 is over the bags of remaining words; a question scores the
best over its reference answers.

- v1.1 (``evaluate-v1.1.py``): every question has answers; an empty prediction scores 0.
- v2.0 (``evaluate-v2.0.py``): references that normalise to nothing are dropped and an
  unanswerable question's only reference is ""; an empty prediction and an empty
  reference agree (1), otherwise an empty side scores 0. ``HasAns_*`` / ``NoAns_*`` split
  the figures; :func:`best_threshold` is the script's ``find_best_thresh``: the no-answer
  score threshold that maximises the figure, swept over the validation questions.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, articles and extra whitespace (the scripts' ``normalize_answer``)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _f1(gold: str, pred: str, version: str) -> float:
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if version == "2.0" and (not g or not p):
        return float(g == p)
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[Sequence[str]], preds: Sequence[str], version: str = "1.1"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Exact match (0/1) and F1 (0-1) per question: the best over its reference answers."""
    exact = np.zeros(len(preds))
    f1 = np.zeros(len(preds))
    for i, (refs, pred) in enumerate(zip(golds, preds)):
        if version == "2.0":
            refs = [a for a in refs if normalize_answer(a)] or [""]
        if not refs:
            continue  # v1.1 has no unanswerable questions: such a question counts as a miss
        norm_pred = normalize_answer(pred)
        exact[i] = max(float(normalize_answer(a) == norm_pred) for a in refs)
        f1[i] = max(_f1(a, pred, version) for a in refs)
    return exact, f1


def best_threshold(exact_or_f1: np.ndarray, preds: Sequence[str], na_scores: np.ndarray, has_answer: np.ndarray
                   ) -> tuple[float, float]:
    """(best figure on the 0-100 scale, threshold) when questions whose no-answer score exceeds the threshold
    are answered with "": the official ``find_best_thresh`` sweep (``exact_or_f1``: per-question scores of
    the span predictions ``preds``).

    The script starts from threshold 0.0, a probability; our no-answer scores are logit margins,
    so the sweep starts below every score instead (everything answered "").
    """
    n = len(preds)
    if n == 0:
        return 0.0, 0.0
    score = best = float((~has_answer).sum())
    thresh = float(np.min(na_scores)) - 1.0
    for i in np.argsort(na_scores, kind="stable"):
        if has_answer[i]:
            score += exact_or_f1[i]
        else:
            score += -1.0 if preds[i] else 0.0
        if score > best:
            best, thresh = score, float(na_scores[i])
    return 100.0 * float(best) / n, thresh


def qa_report(golds: Sequence[Sequence[str]], preds: Sequence[str], version: str = "1.1") -> dict[str, float]:
    """``exact_match`` and ``f1`` (0-100); for v2.0 also ``HasAns_*`` and ``NoAns_*`` figures and totals."""
    exact, f1 = question_scores(golds, preds, version)
    n = max(1, len(preds))
    report = {"exact_match": 100.0 * float(exact.sum()) / n, "f1": 100.0 * float(f1.sum()) / n}
    if version == "2.0":
        has = np.array([len(refs) > 0 for refs in golds], dtype=bool)  # as the script: any reference at all
        for name, part in (("HasAns", has), ("NoAns", ~has)):
            k = int(part.sum())
            report[f"{name}_total"] = float(k)
            report[f"{name}_exact"] = 100.0 * float(exact[part].sum()) / k if k else 0.0
            report[f"{name}_f1"] = 100.0 * float(f1[part].sum()) / k if k else 0.0
    return report
