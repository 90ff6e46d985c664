"""Stream masked-data shards as padded NumPy batches for pretraining.

Rows are read in stored order (generation already shuffled them globally), shard after
shard, with ``ParquetFile.iter_batches`` over row groups, so memory stays at about one
row group plus one batch. ``start_row`` seeks directly: the shard comes from the
manifest's per-shard row counts, the row group from the Parquet footer; nothing before
it is read.

Batches (dict of NumPy arrays):

- ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``: int64 ``[B, L]``,
  ``L`` = ``max_seq_length`` (``pad_to="max_length"``, the default: static shapes) or the
  longest row of the batch (``pad_to="longest"``). Padding: ``[PAD]`` id, attention 0,
  token type 0, label -100.
- ``labels``: the original token id at predicted positions, -100 elsewhere. Static data:
  from the stored ``masked_positions`` / ``masked_ids``. Dynamic data: drawn per batch by
  :func:`bert_core.mask.masking.mask_batch` with a generator seeded by
  ``(seed, first row of the batch)``: the same masks on every run, after a resume at the
  same row, and for any number of data-loader workers. Pass ``seed + epoch`` for fresh
  masks each epoch.
- ``next_sentence_label``: int64 ``[B]`` (1 = B is a random segment), ``nsp`` data only.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.mask.masking import IGNORE_INDEX, apply_masks, select_positions
from bertflow.bert_core.stageio import read_manifest

_REQUIRED = ("recipe", "masking", "max_seq_length", "vocab_size", "special_ids", "num_rows", "shards",
             "masked_lm_prob", "max_predictions_per_seq")
_MASK_STREAM = 0x4D41534B  # "MASK": keeps the reader's generators apart from generation's


class MaskedDataset:
    """A masked-data directory (the mask stage's output), readable from any row.

    Attributes: ``manifest`` (dict), ``num_rows``, ``vocab_size``, ``special_ids``
    (``{"pad", "unk", "cls", "sep", "mask"}`` -> id), ``max_seq_length``, ``recipe``,
    ``masking``, ``path``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"masked-data directory {self.path} does not exist (run the mask stage first)")
        m = read_manifest(self.path, "mask")
        missing = [k for k in _REQUIRED if k not in m]
        if missing:
            raise InputError(f"{self.path}/manifest.json lacks {', '.join(missing)}: not a masked-data directory "
                             "(re-run the mask stage)")
        self.manifest: dict[str, Any] = m
        self.recipe: str = m["recipe"]
        self.masking: str = m["masking"]
        self.max_seq_length = int(m["max_seq_length"])
        self.vocab_size = int(m["vocab_size"])
        self.special_ids: dict[str, int] = {k: int(v) for k, v in m["special_ids"].items()}
        self.num_rows = int(m["num_rows"])
        self.files = [self.path / s["file"] for s in m["shards"]]
        rows = [int(s["rows"]) for s in m["shards"]]
        for f, n in zip(self.files, rows):
            if not f.is_file():
                raise InputError(f"masked-data shard {f} is listed in {self.path}/manifest.json but missing "
                                 "(re-run the mask stage)")
            # footers up front (cheap): a cut shard fails here, not after hours of training when it is reached
            try:
                found = pq.read_metadata(f).num_rows
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"masked-data shard {f} cannot be read: {exc} (re-run the mask stage)") from None
            if found != n:
                raise InputError(f"masked-data shard {f} holds {found} rows but {self.path}/manifest.json says {n} "
                                 "(re-run the mask stage)")
        self._shard_start = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64).tolist()
        if self._shard_start[-1] != self.num_rows:
            raise InputError(f"{self.path}/manifest.json: shard rows add up to {self._shard_start[-1]}, "
                             f"not num_rows={self.num_rows}")
        self._specials = np.asarray(sorted(set(self.special_ids.values())), dtype=np.int64)
        self._special_table = np.zeros(self.vocab_size, dtype=bool)
        self._special_table[self._specials] = True
        self._word_starts = None
        if m.get("whole_word") and self.masking == "dynamic":
            self._word_starts = np.ones(self.vocab_size, dtype=bool)
            self._word_starts[np.asarray(m.get("continuation_ids", []), dtype=np.int64)] = False

    def __len__(self) -> int:
        return self.num_rows

    def num_batches(self, batch_size: int, start_row: int = 0, drop_last: bool = False) -> int:
        rows = max(self.num_rows - start_row, 0)
        return rows // batch_size if drop_last else -(-rows // batch_size)

    def iter_batches(self, batch_size: int, start_row: int = 0, seed: int | None = None, drop_last: bool = False,
                     pad_to: Literal["max_length", "longest"] = "max_length") -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``batch_size`` rows from ``start_row`` to the end (the last one short unless ``drop_last``).

        ``seed`` (dynamic masking only) defaults to the manifest's seed.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= start_row <= self.num_rows:
            raise ValueError(f"start_row {start_row} is outside [0, {self.num_rows}]")
        seed = int(self.manifest.get("seed", 0) if seed is None else seed)
        pending: list[pa.RecordBatch] = []
        have, first_row = 0, start_row
        for rb in self._record_batches(start_row):
            pending.append(rb)
            have += rb.num_rows
            while have >= batch_size:
                table = pa.Table.from_batches(pending)
                yield self._to_numpy(table.slice(0, batch_size), first_row, seed, pad_to)
                rest = table.slice(batch_size)
                pending = rest.to_batches() if rest.num_rows else []
                have -= batch_size
                first_row += batch_size
        if have and not drop_last:
            yield self._to_numpy(pa.Table.from_batches(pending), first_row, seed, pad_to)

    def _record_batches(self, start_row: int) -> Iterator[pa.RecordBatch]:
        shard = bisect.bisect_right(self._shard_start, start_row) - 1
        offset = start_row - self._shard_start[shard] if shard < len(self.files) else 0
        for s in range(shard, len(self.files)):
            try:
                pf = pq.ParquetFile(self.files[s])
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"masked-data shard {self.files[s]} cannot be read: {exc}") from None
            md = pf.metadata
            group, skip = 0, offset
            while group < md.num_row_groups and skip >= md.row_group(group).num_rows:
                skip -= md.row_group(group).num_rows
                group += 1
            if group < md.num_row_groups:
                size = max(md.row_group(group).num_rows, 1)
                for rb in pf.iter_batches(batch_size=size, row_groups=range(group, md.num_row_groups)):
                    if skip:
                        rb, skip = rb.slice(skip), 0
                    if rb.num_rows:
                        yield rb
            offset = 0

    def _to_numpy(self, table: pa.Table, first_row: int, seed: int, pad_to: str) -> dict[str, np.ndarray]:
        ids_col = table.column("input_ids")
        lengths = _list_lengths(ids_col)
        width = self.max_seq_length if pad_to == "max_length" else int(lengths.max(initial=1))
        valid = np.arange(width)[None, :] < lengths[:, None]
        input_ids = np.full(valid.shape, self.special_ids["pad"], dtype=np.int64)
        input_ids[valid] = _list_values(ids_col)
        token_type_ids = np.zeros(valid.shape, dtype=np.int64)
        token_type_ids[valid] = _list_values(table.column("token_type_ids"))
        if self.masking == "static":
            labels = np.full(valid.shape, IGNORE_INDEX, dtype=np.int64)
            pos_col = table.column("masked_positions")
            rows = np.repeat(np.arange(len(lengths)), _list_lengths(pos_col))
            labels[rows, _list_values(pos_col).astype(np.int64)] = _list_values(table.column("masked_ids"))
        else:
            input_ids, labels = self.mask(input_ids, valid, np.random.default_rng([seed, _MASK_STREAM, first_row]))
        out = {"input_ids": input_ids, "attention_mask": valid.astype(np.int64), "token_type_ids": token_type_ids,
               "labels": labels}
        if "next_sentence_label" in table.column_names:
            out["next_sentence_label"] = table.column("next_sentence_label").to_numpy().astype(np.int64)
        return out

    def mask(self, input_ids: np.ndarray, attention_mask: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Dynamic masking of a padded batch with this data's settings (what ``iter_batches`` applies)."""
        special = self._special_table[input_ids] | (np.asarray(attention_mask) == 0)
        starts = None if self._word_starts is None else self._word_starts[input_ids]
        selected = select_positions(input_ids.shape, special, starts, rng, float(self.manifest["masked_lm_prob"]),
                                    int(self.manifest["max_predictions_per_seq"]))
        return apply_masks(input_ids, selected, rng, vocab_size=self.vocab_size, specials=self._specials,
                           mask_id=self.special_ids["mask"])


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The batch as torch tensors (shares memory with the NumPy arrays)."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def _list_lengths(col: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([np.diff(np.asarray(c.offsets)) for c in col.chunks]).astype(np.int64) \
        if col.num_chunks else np.zeros(0, dtype=np.int64)


def _list_values(col: pa.ChunkedArray) -> np.ndarray:
    parts = []
    for c in col.chunks:
        offsets = np.asarray(c.offsets)
        parts.append(np.asarray(c.values)[offsets[0]:offsets[-1]])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
