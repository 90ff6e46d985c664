"""Padded NumPy batches -> the packed (padding-free) tensors the model consumes.

Why pack on the CPU: the data-loader workers already hold the batch, so they can
drop the padding, compute the masked positions and the sequence boundaries there.
The GPU step then needs no ``nonzero`` (a host sync) and, when every sequence has
the same length (packed ``full`` data), sees the same shapes on every step, which
``torch.compile`` and CUDA graphs want.

Layout: the tokens of all sequences are concatenated, ``[T]`` with ``T = sum(lengths)``;
``cu_seqlens`` ``[B+1]`` marks where each sequence starts. The sparse MLM head reads
``mlm_positions`` (indices into ``T``), padded to a fixed count with position 0 and
label -100 (ignored by the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

IGNORE = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T] int64
    token_type_ids: torch.Tensor  # [T] int64
    position_ids: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, -100 where not predicted (dense head only)
    mlm_positions: torch.Tensor  # [K] int64 into T (fill: 0)
    mlm_labels: torch.Tensor  # [K] int64 (fill: -100)
    cu_seqlens: torch.Tensor  # [B+1] int32
    pad_index: torch.Tensor  # [T] int64: each token's slot in a [B, max_seqlen] padded layout
    cls_positions: torch.Tensor  # [B] int64: first token of each sequence
    nsp_labels: torch.Tensor | None  # [B] int64, or None without NSP
    max_seqlen: int
    dense_seqlen: int | None  # every sequence has this length (no padding at all), else None
    num_tokens: int  # T (real tokens)
    num_masked: int  # real MLM targets (<= K)
    sum_sq_len: int  # sum of squared sequence lengths (attention FLOPs)

    @property
    def num_sequences(self) -> int:
        return self.cls_positions.shape[0]

    def _map(self, fn) -> PackedBatch:
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        """Called by DataLoader(pin_memory=True) so host->device copies can be asynchronous."""
        return self._map(lambda t: t.pin_memory())


def mlm_rows(batch_size: int, max_predictions: int) -> int:
    """Fixed number of sparse-head rows for a batch (static shape across steps)."""
    return batch_size * max_predictions


def pack_batch(batch: dict[str, np.ndarray], max_predictions: int | None = None) -> PackedBatch:
    """Drop padding from a reader batch and locate its MLM targets.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` ([B, L],
            real tokens first in each row, labels -100 where not predicted) and optionally
            ``next_sentence_label`` ([B]).
        max_predictions: per-sequence MLM capacity; the sparse head gets
            ``B * max_predictions`` rows (more, rounded up to a multiple of 64, if a batch
            ever has more targets). None: exactly the number of targets (dynamic shape).
    """
    ids = np.asarray(batch["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    bsz, width = ids.shape
    attn = np.asarray(batch["attention_mask"]).astype(bool, copy=False)
    lengths = attn.sum(axis=1)
    if not np.array_equal(attn, np.arange(width)[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be a prefix of ones in every row (right padding)")
    flat = attn.reshape(-1)
    types = np.asarray(batch.get("token_type_ids", np.zeros_like(ids)))
    labels = np.asarray(batch["labels"]).astype(np.int64, copy=False).reshape(-1)[flat]
    positions = np.broadcast_to(np.arange(width, dtype=np.int64), (bsz, width)).reshape(-1)[flat]
    max_len = int(lengths.max()) if bsz else 0
    rows = np.repeat(np.arange(bsz, dtype=np.int64), lengths)
    cu = np.zeros(bsz + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])

    targets = np.flatnonzero(labels != IGNORE)
    n_masked = len(targets)
    if max_predictions is None:
        k = n_masked
    else:
        k = mlm_rows(bsz, max_predictions)
        if n_masked > k:  # more targets than planned: keep them all (a new shape, rare)
            k = -(-n_masked // 64) * 64
    mlm_positions = np.zeros(k, dtype=np.int64)
    mlm_positions[:n_masked] = targets
    mlm_labels = np.full(k, IGNORE, dtype=np.int64)
    mlm_labels[:n_masked] = labels[targets]

    nsp = batch.get("next_sentence_label")
    uniform = bsz > 0 and bool((lengths == lengths[0]).all())
    return PackedBatch(
        input_ids=torch.from_numpy(ids.reshape(-1)[flat].astype(np.int64)),
        token_type_ids=torch.from_numpy(types.reshape(-1)[flat].astype(np.int64)),
        position_ids=torch.from_numpy(np.ascontiguousarray(positions)),
        labels=torch.from_numpy(np.ascontiguousarray(labels)),
        mlm_positions=torch.from_numpy(mlm_positions),
        mlm_labels=torch.from_numpy(mlm_labels),
        cu_seqlens=torch.from_numpy(cu),
        pad_index=torch.from_numpy(rows * max_len + positions),
        cls_positions=torch.from_numpy(cu[:-1].astype(np.int64)),
        nsp_labels=None if nsp is None else torch.from_numpy(np.asarray(nsp).astype(np.int64)),
        max_seqlen=max_len,
        dense_seqlen=int(lengths[0]) if uniform else None,
        num_tokens=int(cu[-1]),
        num_masked=n_masked,
        sum_sq_len=int((lengths.astype(np.int64) ** 2).sum()),
    )
