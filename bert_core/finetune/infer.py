"""Batched inference over encoded examples: the one code path for validation, export checks and predict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bertflow.bert_core.finetune.batching import collate, sorted_batches
from bertflow.bert_core.finetune.encode import Encoded
from bertflow.bert_core.finetune.model import autocast


@dataclass
class SequenceOutputs:
    pred: np.ndarray  # (N,) label ids
    score: np.ndarray  # (N,) probability of the predicted label
    probs: np.ndarray  # (N, C)


@dataclass
class SpanOutputs:
    start: list[np.ndarray]  # per window, start logit per token
    end: list[np.ndarray]


@dataclass
class TokenOutputs:
    pred: list[np.ndarray]  # per example, one label id per word
    score: list[np.ndarray]  # per example, probability of each word's label (0 for words lost to truncation)
    # Per example, gold and predicted label ids of every labelled piece (the training labels: first pieces,
    # and later pieces too under ``label_pieces: all``); None when the encoding carries no labels.
    piece_gold: list[np.ndarray] | None = None
    piece_pred: list[np.ndarray] | None = None


@torch.no_grad()
def infer(
    model,
    enc: Encoded,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    pad_id: int,
    missing_id: int = 0,
) -> SequenceOutputs | TokenOutputs:
    """Predict every example of ``enc``; token models read each word's first piece.

    ``missing_id`` is the label given to words with no piece in the input (truncated
    away, or tokenised to nothing): usually ``O``.
    """
    was_training = model.training
    model.eval()
    token_task = enc.word_starts is not None
    pad_multiple = 8 if device.type == "cuda" else 1
    n = len(enc)
    num_labels = model.config.num_labels
    seq_probs = np.zeros((n, num_labels), dtype=np.float32) if not token_task else None
    tok_pred: list[np.ndarray | None] = [None] * n
    tok_score: list[np.ndarray | None] = [None] * n
    pieces = token_task and enc.labels is not None
    piece_gold: list[np.ndarray | None] = [None] * n
    piece_pred: list[np.ndarray | None] = [None] * n
    try:
        for idx in sorted_batches(enc.lengths, batch_size):
            batch = collate(enc, idx, pad_id, pad_multiple)
            batch.pop("labels", None)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, amp_dtype):
                logits = model(**batch).logits
            probs = torch.softmax(logits.float(), dim=-1)
            if not token_task:
                seq_probs[idx] = probs.cpu().numpy()
                continue
            score, pred = probs.max(dim=-1)
            score, pred = score.cpu().numpy(), pred.cpu().numpy()
            for r, i in enumerate(idx):
                starts = enc.word_starts[i]
                ok = starts >= 0
                p = np.full(len(starts), missing_id, dtype=np.int64)
                s = np.zeros(len(starts), dtype=np.float32)
                p[ok] = pred[r, starts[ok]]
                s[ok] = score[r, starts[ok]]
                tok_pred[i], tok_score[i] = p, s
                if pieces:
                    gold = np.asarray(enc.labels[i], dtype=np.int64)
                    labelled = gold >= 0  # not IGNORE (special tokens, unlabelled pieces) nor a negative no-gold tag
                    piece_gold[i], piece_pred[i] = gold[labelled], pred[r, : len(gold)][labelled]
    finally:
        model.train(was_training)
    if token_task:
        return TokenOutputs(tok_pred, tok_score, *((piece_gold, piece_pred) if pieces else (None, None)))  # type: ignore[arg-type]
    pred = seq_probs.argmax(axis=1)
    return SequenceOutputs(pred, seq_probs[np.arange(n), pred], seq_probs)


@torch.no_grad()
def infer_spans(model, enc: Encoded, batch_size: int, device: torch.device, amp_dtype: torch.dtype | None,
                pad_id: int) -> SpanOutputs:
    """Start and end logits of every window of ``enc`` (question answering), trimmed to each window's length."""
    was_training = model.training
    model.eval()
    pad_multiple = 8 if device.type == "cuda" else 1
    starts: list[np.ndarray | None] = [None] * len(enc)
    ends: list[np.ndarray | None] = [None] * len(enc)
    try:
        for idx in sorted_batches(enc.lengths, batch_size):
            batch = collate(enc, idx, pad_id, pad_multiple)
            for key in ("labels", "start_positions", "end_positions"):
                batch.pop(key, None)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, amp_dtype):
                out = model(**batch)
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for r, i in enumerate(idx):
                k = len(enc.input_ids[i])
                starts[i], ends[i] = s[r, :k], e[r, :k]
    finally:
        model.train(was_training)
    return SpanOutputs(starts, ends)  # type: ignore[arg-type]
