"""Ragged batches of sequences (flat values + offsets), assembled from token spans in NumPy.

Both recipes describe their sequences as spans of the flat token array of a work unit
(``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``); :func:`assemble` turns the spans into
the output arrays with one gather, without a Python loop per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ranges_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every ``(s, n)``, vectorised."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts - (ends - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


@dataclass
class Ragged:
    """Rows of varying length: row ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray
    offsets: np.ndarray  # int64, len(rows) + 1, offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Ragged:
        lengths = self.lengths[rows]
        idx = ranges_to_indices(self.offsets[:-1][rows], lengths)
        return Ragged(self.values[idx], _offsets(lengths))

    def slice(self, start: int, stop: int) -> Ragged:
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        return Ragged(self.values[a:b], self.offsets[start:stop + 1] - a)

    def to_padded(self, width: int, pad: int, dtype=None) -> np.ndarray:
        """``[rows, width]`` array; rows must not be longer than ``width``."""
        lengths = self.lengths
        out = np.full((len(self), width), pad, dtype=dtype or self.values.dtype)
        out[np.arange(width)[None, :] < lengths[:, None]] = self.values
        return out

    @staticmethod
    def from_padded(padded: np.ndarray, lengths: np.ndarray) -> Ragged:
        valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
        return Ragged(padded[valid], _offsets(lengths))

    @staticmethod
    def concat(parts: list[Ragged]) -> Ragged:
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([p.lengths for p in parts])
        return Ragged(np.concatenate([p.values for p in parts]), _offsets(lengths))


@dataclass
class Sequences:
    """A unit's sequences before masking: token ids, token types, NSP labels (or None)."""

    input_ids: Ragged  # int32 values
    token_type_ids: Ragged  # uint8 values, same offsets
    next_sentence_label: np.ndarray | None = None  # int8 [n], nsp only

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, rows: np.ndarray) -> Sequences:
        nsl = None if self.next_sentence_label is None else self.next_sentence_label[rows]
        return Sequences(self.input_ids.take(rows), self.token_type_ids.take(rows), nsl)


def assemble(ids: np.ndarray, cls_id: int, sep_id: int, a_start: np.ndarray, a_end: np.ndarray,
             b_start: np.ndarray | None = None, b_end: np.ndarray | None = None,
             next_sentence_label: np.ndarray | None = None) -> Sequences:
    """``[CLS] ids[a] [SEP]`` rows, or ``[CLS] ids[a] [SEP] ids[b] [SEP]`` rows when ``b`` is given."""
    n = len(a_start)
    ext = np.concatenate([ids, np.asarray([cls_id, sep_id], dtype=ids.dtype)])
    cls_at, sep_at = len(ids), len(ids) + 1
    ones = np.ones(n, dtype=np.int64)
    a_len = np.asarray(a_end, dtype=np.int64) - a_start
    if b_start is None:
        starts = np.stack([cls_at * ones, a_start, sep_at * ones], axis=1)
        lengths = np.stack([ones, a_len, ones], axis=1)
        piece_type = np.zeros(3, dtype=np.uint8)
    else:
        b_len = np.asarray(b_end, dtype=np.int64) - b_start
        starts = np.stack([cls_at * ones, a_start, sep_at * ones, b_start, sep_at * ones], axis=1)
        lengths = np.stack([ones, a_len, ones, b_len, ones], axis=1)
        piece_type = np.asarray([0, 0, 0, 1, 1], dtype=np.uint8)
    flat_lengths = lengths.ravel()
    values = ext[ranges_to_indices(starts.ravel(), flat_lengths)]
    types = np.repeat(np.tile(piece_type, n), flat_lengths)
    offsets = _offsets(lengths.sum(axis=1))
    return Sequences(Ragged(values, offsets), Ragged(types, offsets.copy()), next_sentence_label)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out
