"""The training batch stream: deterministic, seekable in O(1), split over ranks and workers.

The masked data is read as an endless cyclic stream of rows (epoch after epoch, rows in
the order generation shuffled them). Micro-batch ``j`` (counted from the start of
training) is rows ``[j*m, (j+1)*m)`` of that stream, ``m`` = ``batch_size``. Rank ``r``
of ``W`` takes micro-batches ``r, r+W, r+2W, ...`` (a disjoint stride), so optimizer
step ``s`` consumes micro-batches ``[s*A*W, (s+1)*A*W)`` (``A`` = grad_accum) and the
data position after it is the global row offset ``(s+1)*A*W*m``. Resuming just starts
the stream there: the reader seeks to a (shard, row) directly.

DataLoader workers share a rank's batches round-robin (worker ``w`` makes the rank's
local batches ``w, w+N, ...``), which is the order DataLoader hands them back in,
so the batch sequence does not depend on the number of workers.

Rows come from the shared reader (:class:`bert_core.mask.reader.MaskedDataset`). With
dynamic masking it draws the masks per batch from a generator keyed by (seed + epoch,
first row of the batch); we always ask for the same batches (a micro-batch's rows, or
an epoch's tail and the next epoch's head), so the masks are the same on every run and
after a resume, and differ between epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bertflow.bert_core.mask.reader import MaskedDataset
from bertflow.bert_core.orphans import worker_start_method
from bertflow.bert_core.pretrain.batch import IGNORE, PackedBatch, pack_batch
from bertflow.bert_core.pretrain.inputs import DataInfo


class RowReader:
    """Reads ``rows`` rows at any global stream offset, re-using the open iterator when contiguous."""

    def __init__(self, info: DataInfo, rows: int, seed: int) -> None:
        self.info = info
        self.rows = rows
        self.seed = seed
        self.dataset = MaskedDataset(info.data_dir)
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self._key: tuple[int, int] | None = None  # (next global row, batch size) the open iterator continues at

    def read(self, row: int) -> dict[str, np.ndarray]:
        parts, need = [], self.rows
        n = self.info.num_rows
        while need > 0:
            epoch, within = divmod(row, n)
            take = min(need, n - within)
            if self._it is None or self._key != (row, take):
                self._it = iter(self.dataset.iter_batches(take, start_row=within, seed=self.seed + epoch))
            batch = next(self._it)
            got = len(batch["input_ids"])
            if got != take:
                raise RuntimeError(f"reader returned {got} rows at row {within}, expected {take}")
            row += take
            need -= take
            self._key = (row, take) if row % n else None
            parts.append(batch)
        return parts[0] if len(parts) == 1 else concat_batches(parts, self.info.special_ids["pad"])


def concat_batches(parts: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Stack padded batches of different widths (an epoch's tail + the next epoch's head)."""
    width = max(p["input_ids"].shape[1] for p in parts)
    fill = {"input_ids": pad_id, "labels": IGNORE}
    out: dict[str, Any] = {}
    for key in parts[0]:
        arrays = []
        for p in parts:
            a = np.asarray(p[key])
            if a.ndim == 2 and a.shape[1] < width:
                a = np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill.get(key, 0))
            arrays.append(a)
        out[key] = np.concatenate(arrays)
    return out


class PretrainStream(IterableDataset):
    """Endless packed micro-batches of one rank, from global micro-batch ``start`` on."""

    def __init__(self, info: DataInfo, batch_size: int, start: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, max_predictions: int | None = None) -> None:
        super().__init__()
        self.info = info
        self.batch_size = batch_size
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.max_predictions = max_predictions

    def micro_batch_index(self, local: int) -> int:
        """Global micro-batch index of this rank's ``local``-th batch."""
        return self.start + local * self.world_size + self.rank

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = RowReader(self.info, self.batch_size, self.seed)
        local = worker
        while True:
            j = self.micro_batch_index(local)
            yield pack_batch(reader.read(j * self.batch_size), self.max_predictions)
            local += workers


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers pack NumPy arrays; torch threads would only oversubscribe the CPU


def make_loader(stream: PretrainStream, num_workers: int, pin_memory: bool, prefetch_factor: int) -> DataLoader:
    """Workers start from a forkserver, not as forks of this threaded process (``worker_start_method``)."""
    return DataLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers else None,
        worker_init_fn=_worker_init if num_workers else None,
        multiprocessing_context=worker_start_method() if num_workers else None,
        generator=torch.Generator().manual_seed(0),  # so making the loader never draws from the global RNG
    )
