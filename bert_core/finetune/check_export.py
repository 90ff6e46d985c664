"""Check that the exported directory, loaded through the Auto classes, predicts what we evaluated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bertflow.bert_core.finetune.examples import Examples, TaggedExamples
from bertflow.bert_core.finetune.infer import SequenceOutputs, TokenOutputs

SAMPLE = 64  # validation examples re-predicted from the export
TOLERANCE = 5e-3  # probabilities differ by float noise when batches are shaped differently (or TF32 is on)
LOGIT_TOLERANCE = 2e-2  # span logits are unbounded: the same float noise, on a larger scale


def compare_with_export(
    model_dir: Path, valid: Examples, ours: SequenceOutputs | TokenOutputs, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Re-predict the first validation examples from ``model_dir``; raise if they disagree.

    A mismatch is a bug in our export, not a user error, so it is a RuntimeError.
    Labels must match wherever the winning probability is above 0.5 + tolerance (no
    near-tie that float noise could flip).
    """
    from bertflow.bert_core.finetune.predict import Predictor

    k = min(SAMPLE, len(valid))
    predictor = Predictor(model_dir, device=str(device), batch_size=batch_size)
    sub = valid.subset(range(k))
    if isinstance(sub, TaggedExamples):
        theirs = predictor.token_outputs(sub.words)
        ours_score = np.concatenate([ours.score[i] for i in range(k)]) if k else np.zeros(0)
        ours_pred = np.concatenate([ours.pred[i] for i in range(k)]) if k else np.zeros(0, dtype=np.int64)
        their_score = np.concatenate(theirs.score) if k else np.zeros(0)
        their_pred = np.concatenate(theirs.pred) if k else np.zeros(0, dtype=np.int64)
        diff = float(np.abs(ours_score - their_score).max()) if len(ours_score) else 0.0
    else:
        theirs = predictor.sequence_outputs(sub.texts, sub.pairs)
        ours_score, ours_pred = ours.score[:k], ours.pred[:k]
        their_pred = theirs.pred
        diff = float(np.abs(ours.probs[:k] - theirs.probs).max()) if k else 0.0
    confident = ours_score > 0.5 + TOLERANCE
    mismatches = int((ours_pred[confident] != their_pred[confident]).sum())
    if diff > TOLERANCE or mismatches:
        raise RuntimeError(
            f"exported model in {model_dir} disagrees with the trained one on the validation set "
            f"(max probability difference {diff:.2e}, {mismatches} confident label mismatches)"
        )
    return {"examples": float(k), "max_abs_diff": diff}


def compare_qa_export(model_dir: Path, valid, ours, windows, device: torch.device, batch_size: int
                      ) -> dict[str, float]:
    """Question answering: re-decode the first validation questions from ``model_dir``; raise if the
    exported model's span logits differ from the trained one's (``ours``: its SpanOutputs on ``windows``)."""
    from bertflow.bert_core.finetune.predict import Predictor

    k = min(SAMPLE, len(valid))
    predictor = Predictor(model_dir, device=str(device), batch_size=batch_size)
    sub = valid.subset(range(k))
    their_windows, theirs = predictor.span_outputs(sub.questions, sub.contexts)
    mine = [w for w in range(len(windows)) if windows.example[w] < k]
    if len(mine) != len(their_windows):
        raise RuntimeError(f"exported model in {model_dir} cuts the validation questions into {len(their_windows)} "
                           f"windows, the trained one into {len(mine)}")
    diff = 0.0
    for a, w in enumerate(mine):
        for x, y in ((ours.start[w], theirs.start[a]), (ours.end[w], theirs.end[a])):
            diff = max(diff, float(np.abs(x - y).max()) if len(x) else 0.0)
    if diff > LOGIT_TOLERANCE:
        raise RuntimeError(f"exported model in {model_dir} disagrees with the trained one on the validation set "
                           f"(max span logit difference {diff:.2e})")
    return {"examples": float(k), "max_abs_diff": diff}
