"""Turn a window of rows into length-sorted, dynamically padded batches, and flag bad rows.

Bad rows never stop a file. Error codes (the output's ``error`` column):

- ``null_text`` / ``empty_text`` (empty or whitespace-only), and ``null_text_pair`` /
  ``empty_text_pair`` for the second segment in pair mode; the qa head's ``null_question``,
  ``empty_question``, ``null_context``, ``empty_context``: not scored;
- ``not_text:<type>``: the text column is not a string (an int column named as text),
  not scored; ``non_string_text="cast"`` instead casts numbers and booleans to text
  and scores them (we default to the error: a silent cast would score ids as prose);
- ``invalid_utf8``: a string cell whose bytes are not UTF-8 (a broken writer), not scored;
- ``truncated``: cut and **scored**: longer than ``max_length`` tokens (sequence head), or
  than ``max_windows`` windows (token and qa heads, which window long texts instead), or
  a qa question longer than 64 tokens. Very long strings are cut to 64 characters per
  token of room before tokenizing, so one 100 MB cell costs no more than a normal row.

Unscored rows get null predictions.

Sorting by token length inside a window (``batch_size * sort_window`` rows) makes
each batch nearly uniform in length, so padding (to the batch's longest row, not to
``max_length``) wastes almost nothing; the window keeps its row order for output.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bertflow.bert_core.arrowtext import invalid_utf8_rows

ERR_NULL = "null_text"
ERR_EMPTY = "empty_text"
ERR_NULL_PAIR = "null_text_pair"
ERR_EMPTY_PAIR = "empty_text_pair"
ERR_INVALID_UTF8 = "invalid_utf8"
FLAG_TRUNCATED = "truncated"


@dataclass
class Texts:
    """A column's texts ready for the tokenizer: values (None where unusable), errors, cut flags."""

    values: list[str | None]
    errors: list[str | None]
    cut: np.ndarray  # bool: the string was cut to max_chars before tokenizing


def extract_texts(col: pa.Array | pa.ChunkedArray, max_chars: int, policy: str,
                  null_code: str = ERR_NULL, empty_code: str = ERR_EMPTY) -> Texts:
    """Validate a text column (vectorised) and return its usable strings."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not _is_text(col.type):
        castable = (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                    or pa.types.is_boolean(col.type) or pa.types.is_decimal(col.type))
        if policy == "cast" and castable:
            col = pc.cast(col, pa.string())
        else:
            code = f"not_text:{col.type}"
            return Texts([None] * n, [code] * n, np.zeros(n, dtype=bool))
    if n == 0:
        return Texts([], [], np.zeros(0, dtype=bool))
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.large_string())  # string_view: the compute kernels below take (large_)string
    bad_utf8 = invalid_utf8_rows(col)
    if bad_utf8 is not None:  # a file that holds non-UTF-8 bytes in a string column: flag those rows
        col = pc.if_else(pa.array(bad_utf8), pa.scalar(None, col.type), col)
    is_null = col.is_null().to_numpy(zero_copy_only=False)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0).fill_null(False).to_numpy(zero_copy_only=False)
    long = pc.greater(pc.utf8_length(col), max_chars).fill_null(False).to_numpy(zero_copy_only=False)
    if long.any():
        col = pc.utf8_slice_codeunits(col, 0, max_chars)
    values = col.to_pylist()
    errors: list[str | None] = [None] * n
    for i in np.flatnonzero(is_null | blank):
        errors[i] = null_code if is_null[i] else empty_code
        values[i] = None
    if bad_utf8 is not None:
        for i in np.flatnonzero(bad_utf8):
            errors[i] = ERR_INVALID_UTF8
    return Texts(values, errors, long)


def _is_text(dtype: pa.DataType) -> bool:
    view = getattr(pa.types, "is_string_view", lambda _t: False)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or view(dtype)


@dataclass
class Batch:
    """One padded model batch: ``rows`` are positions in the window (windowed heads: window numbers)."""

    rows: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    padded: bool = True  # False when every row fills the width (no mask needed)


@dataclass
class EncodedWindow:
    """A window's rows: which are scored, which are flagged, and their batches."""

    n: int
    errors: list[str | None]  # final per-row codes (None: fine; "truncated": scored but cut)
    scored: np.ndarray  # bool per row
    batches: list[Batch]
    tokens: int  # real (unpadded) tokens, for statistics
    padded_tokens: int
    extra: Any = None  # what the head needs to turn model outputs into columns (its windows, offsets, ...)


def merge_errors(first: Texts, second: Texts | None) -> list[str | None]:
    """Per-row codes of two input columns: the first column's code wins."""
    errors = list(first.errors)
    if second is not None:
        for i, err in enumerate(second.errors):
            if errors[i] is None and err is not None:
                errors[i] = err
    return errors


def encode_window(texts: Texts, pairs: Texts | None, tokenizer, batch_size: int, pad_id: int,
                  pad_multiple: int, use_types: bool, sort: bool, pin: bool, max_tokens: int = 0) -> EncodedWindow:
    """Tokenize a window's valid rows in one parallel call, sort by length, pad per batch."""
    n = len(texts.values)
    errors = merge_errors(texts, pairs)
    valid = np.array([e is None for e in errors], dtype=bool) if n else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return EncodedWindow(n, errors, valid, [], 0, 0)
    if pairs is None:
        encodings = tokenizer.encode_batch([texts.values[i] for i in rows])
    else:
        encodings = tokenizer.encode_batch([(texts.values[i], pairs.values[i]) for i in rows])
    ids = [e.ids for e in encodings]
    cut = texts.cut[rows] | (pairs.cut[rows] if pairs is not None else False)
    overflow = np.fromiter((len(e.overflowing) > 0 for e in encodings), dtype=bool, count=len(encodings))
    for i in rows[cut | overflow]:
        errors[i] = FLAG_TRUNCATED
    types = [e.type_ids for e in encodings] if (use_types and pairs is not None) else None
    batches, tokens, padded = pad_batches(ids, types, rows, batch_size, pad_id, pad_multiple, use_types, sort, pin,
                                          max_tokens)
    return EncodedWindow(n, errors, valid, batches, tokens, padded)


def pad_batches(ids: list[list[int]], types: list[list[int]] | None, index: np.ndarray, batch_size: int,
                pad_id: int, pad_multiple: int, use_types: bool, sort: bool, pin: bool,
                max_tokens: int = 0) -> tuple[list[Batch], int, int]:
    """Sequences -> padded batches (sorted by length when ``sort``); ``index[i]`` is sequence i's ``Batch.rows`` entry.

    ``max_tokens`` (0: none) caps a batch's padded size, rows x width, so long sequences come in
    fewer rows. Returns the batches, the real token count and the padded token count.
    """
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(ids))  # longest first: OOM shows early
    batches, padded = [], 0
    for idx in cut_batches(lengths, order, batch_size, max_tokens, pad_multiple):
        width = _round_up(int(lengths[idx].max()), pad_multiple)
        # Scatter the batch's ids through a boolean mask in one step (row-major order = row by row).
        real = np.arange(width) < lengths[idx][:, None]
        total = int(lengths[idx].sum())
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        input_ids[real] = np.fromiter(chain.from_iterable(ids[j] for j in idx), dtype=np.int64, count=total)
        mask = real.astype(np.int64)
        type_ids = np.zeros((len(idx), width), dtype=np.int64) if use_types else None
        if types is not None and use_types:
            type_ids[real] = np.fromiter(chain.from_iterable(types[j] for j in idx), dtype=np.int64, count=total)
        padded += input_ids.size
        batches.append(Batch(index[idx], _tensor(input_ids, pin), _tensor(mask, pin),
                             _tensor(type_ids, pin) if type_ids is not None else None,
                             padded=bool(total < input_ids.size)))
    return batches, int(lengths.sum()), padded


def cut_batches(lengths: np.ndarray, order: np.ndarray, batch_size: int, max_tokens: int = 0,
                pad_multiple: int = 1) -> list[np.ndarray]:
    """Cut ``order`` into consecutive batches of at most ``batch_size`` rows and (when ``max_tokens``)
    at most ``max_tokens`` padded tokens; a sequence longer than the cap gets a batch of its own."""
    if not max_tokens:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out, start, width = [], 0, 0
    for pos, j in enumerate(order):
        wider = max(width, _round_up(int(lengths[j]), pad_multiple))
        rows = pos - start
        if rows and (rows == batch_size or (rows + 1) * wider > max_tokens):
            out.append(order[start:pos])
            start, wider = pos, _round_up(int(lengths[j]), pad_multiple)
        width = wider
    if start < len(order):
        out.append(order[start:])
    return out


def _round_up(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple if multiple > 1 else width


def _tensor(array: np.ndarray, pin: bool) -> torch.Tensor:
    t = torch.from_numpy(array)
    return t.pin_memory() if pin else t
