"""Length-bucketed batches with dynamic padding.

Training: shuffle, cut into chunks of ``bucket_batches`` batches, sort each chunk by
length, cut into batches, shuffle the batches. Batches then hold similar lengths (little
padding) while the order stays random. Inference: one global sort by length.
"""

from __future__ import annotations

import numpy as np
import torch

from bertflow.bert_core.finetune.encode import IGNORE, Encoded


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket_batches: int = 50
) -> list[np.ndarray]:
    perm = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows at once
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(enc: Encoded, idx: np.ndarray, pad_id: int, pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad the examples ``idx`` to the longest among them (rounded up to ``pad_to_multiple``)."""
    seqs = [enc.input_ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    n = len(seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        input_ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        attention[r, : len(s)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if enc.token_type_ids is not None:
        types = torch.zeros((n, width), dtype=torch.long)
        for r, i in enumerate(idx):
            t = enc.token_type_ids[i]
            types[r, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        batch["token_type_ids"] = types
    if enc.positions is not None:
        batch["start_positions"] = torch.as_tensor(enc.positions[idx, 0], dtype=torch.long)
        batch["end_positions"] = torch.as_tensor(enc.positions[idx, 1], dtype=torch.long)
    if enc.labels is not None:
        if enc.word_starts is None:
            batch["labels"] = torch.as_tensor([enc.labels[i] for i in idx], dtype=torch.long)
        else:
            labels = torch.full((n, width), IGNORE, dtype=torch.long)
            for r, i in enumerate(idx):
                lab = enc.labels[i]
                labels[r, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
            batch["labels"] = labels
    return batch
