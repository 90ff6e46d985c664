"""BERT masked-LM masking: one NumPy implementation for static and dynamic masking.

Static generation masks whole output units with it before writing; the reader (and the
pretraining data loader) call it per batch in dynamic mode. Everything works on a padded
``[B, L]`` array, vectorised over the batch (no Python loop per sequence).

Selection, per sequence
-----------------------
- *Candidates* are the positions that are neither special tokens (``[CLS] [SEP] [PAD]
  [MASK] [UNK]``) nor padding: specials are never selected.
- Candidates group into *words*: with ``word_starts`` (whole-word masking) a word is a
  first piece plus the ``##`` continuation pieces after it; without, every token is a word.
- The target is ``k = min(max_predictions, max(1, masked_lm_prob * n_candidates))`` tokens,
  a real number. Words are visited in a uniformly random order and taken while the
  running count of selected tokens stays ``<= k``; the one word that would cross ``k`` is
  taken with probability ``(k - selected_so_far) / len(word)`` (if it still fits under
  ``max_predictions``), after which selection stops. So the expected number of selected
  tokens is exactly ``k`` (for single-token words this is stochastic rounding of ``k``);
  the selected *rate* ``E[selected] / n_candidates`` is ``masked_lm_prob`` whenever the cap
  does not bind and ``p * n_candidates >= 1``. Never more than ``max_predictions`` tokens.
  (Google's ``create_pretraining_data.py`` rounds ``p * len(tokens)``, specials included,
  and skips over words that overflow; HF's collator draws each token independently.)
- Each selected token independently becomes ``[MASK]`` (80%), a random non-special token
  drawn uniformly from the vocabulary (10%), or stays unchanged (10%).

Determinism: the output depends only on the inputs and the state of ``rng`` (a
``numpy.random.Generator``); the draws are made over the whole batch in a fixed order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100
"""Label of positions that are not predicted (PyTorch's ``CrossEntropyLoss`` default)."""

_NO_KEY = np.iinfo(np.int64).max


def mask_batch(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    special_ids: Mapping[str, int] | Sequence[int],
    masked_lm_prob: float = 0.15,
    max_predictions: int = 20,
    word_starts: np.ndarray | None = None,
    mask_id: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask a padded batch; the entry point for dynamic masking in a data loader.

    Args:
        input_ids: ``[B, L]`` integer token ids (any int dtype), padded.
        attention_mask: ``[B, L]``, nonzero at real tokens; ``None`` = no padding besides
            ``[PAD]`` ids (which are special anyway).
        rng: the generator to draw from (e.g. ``np.random.default_rng([seed, first_row])``).
        vocab_size: size of the vocabulary (random replacements are drawn below it).
        special_ids: ``{"pad": 0, "cls": 101, "sep": 102, "mask": 103, "unk": 100}`` (the
            manifest's ``special_ids``) or a sequence of ids plus ``mask_id``. Never selected,
            never drawn as random replacements.
        masked_lm_prob, max_predictions: the selection rate and per-sequence cap.
        word_starts: ``[B, L]`` bool, True where a token begins a word (False for ``##``
            pieces): whole-word masking. ``None``: every token is its own word. See
            :func:`word_start_table` to build it from a vocabulary.
        mask_id: the ``[MASK]`` id, when ``special_ids`` is a plain sequence.
        ignore_index: label of unpredicted positions.

    Returns:
        ``(masked_ids, labels)``: ``masked_ids`` has the dtype and shape of ``input_ids``;
        ``labels`` is int64 ``[B, L]`` holding the original id at selected positions and
        ``ignore_index`` elsewhere.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {ids.shape}")
    specials, mask_id = _specials(special_ids, mask_id)
    special = np.isin(ids, specials)
    if attention_mask is not None:
        special |= np.asarray(attention_mask) == 0
    selected = select_positions(ids.shape, special, word_starts, rng, masked_lm_prob, max_predictions)
    return apply_masks(ids, selected, rng, vocab_size=vocab_size, specials=specials, mask_id=mask_id,
                       ignore_index=ignore_index)


def mask_tokens(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    word_starts: np.ndarray | None,
    rng: np.random.Generator,
    masked_lm_prob: float,
    max_predictions: int,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask one sequence (a 1-row call of the batched implementation).

    Args:
        input_ids: ``[L]`` token ids.
        special_mask: ``[L]`` bool, True at positions never to select.
        word_starts: ``[L]`` bool for whole-word masking, or ``None``.
        special_ids: ids never drawn as random replacements (``mask_id`` always is excluded).

    Returns:
        ``(masked_ids, positions, original_ids)``: positions ascending, int64.
    """
    ids = np.asarray(input_ids)[None, :]
    ws = None if word_starts is None else np.asarray(word_starts, dtype=bool)[None, :]
    specials = np.unique(np.asarray([*special_ids, mask_id], dtype=np.int64))
    selected = select_positions(ids.shape, np.asarray(special_mask, dtype=bool)[None, :], ws, rng,
                                masked_lm_prob, max_predictions)
    masked, labels = apply_masks(ids, selected, rng, vocab_size=vocab_size, specials=specials, mask_id=mask_id)
    positions = np.flatnonzero(labels[0] != IGNORE_INDEX)
    return masked[0], positions, labels[0, positions]


def select_positions(
    shape: tuple[int, int],
    special: np.ndarray,
    word_starts: np.ndarray | None,
    rng: np.random.Generator,
    masked_lm_prob: float,
    max_predictions: int,
) -> np.ndarray:
    """The ``[B, L]`` bool array of positions to predict (the selection rule of the module doc).

    How: every word gets a random sort key shared by its pieces; sorting a row by key puts
    the candidates first, words in random order, pieces of a word adjacent. Word boundaries
    in that order are at the token counts where words end, so "the words that fit under
    ``k``" is a prefix of length ``p`` (the last boundary ``<= k``) and the crossing word
    is the run from ``p`` to the next boundary ``q``.
    """
    b, length = shape
    cand = ~np.asarray(special, dtype=bool)
    n_cand = cand.sum(axis=1)
    k = np.minimum(float(max_predictions), np.maximum(1.0, masked_lm_prob * n_cand))
    k[n_cand == 0] = 0.0
    cols = np.arange(length + 1, dtype=np.int64)
    keys = _random_keys(rng, b * length).reshape(b, length)  # distinct within a row
    if word_starts is not None:
        prev = np.zeros_like(cand)
        prev[:, 1:] = cand[:, :-1]
        starts = cand & (np.asarray(word_starts, dtype=bool) | ~prev)  # a piece after a special opens a word
        start_col = np.maximum.accumulate(np.where(starts, cols[:length], 0), axis=1)
        keys = np.take_along_axis(keys, start_col, axis=1)  # each piece takes its word's key
    keys[~cand] = _NO_KEY
    order = np.argsort(keys, axis=1)
    s_keys = np.take_along_axis(keys, order, axis=1)
    boundary = np.ones((b, length + 1), dtype=bool)  # a word (or the candidates) ends before column j
    boundary[:, 1:length] = s_keys[:, 1:] != s_keys[:, :-1]
    k_floor = np.floor(k).astype(np.int64)[:, None]
    p = np.where(boundary & (cols <= k_floor), cols, 0).max(axis=1)
    q = np.where(boundary & (cols > p[:, None]), cols, length).min(axis=1)
    take = (p < n_cand) & (q <= max_predictions) & (rng.random(b) * (q - p) < k - p)
    n_sel = np.where(take, q, p)
    selected = np.zeros(shape, dtype=bool)
    np.put_along_axis(selected, order, cols[:length] < n_sel[:, None], axis=1)
    return selected


def _random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random non-negative int64 sort keys with their index in the low 32 bits (so all distinct)."""
    raw = rng.bit_generator.random_raw(n)
    return ((raw >> np.uint64(33)) << np.uint64(32)).view(np.int64) | np.arange(n, dtype=np.int64)


def apply_masks(
    ids: np.ndarray,
    selected: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    specials: np.ndarray,
    mask_id: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """80% ``[MASK]`` / 10% random non-special token / 10% unchanged at ``selected``; labels."""
    pos = np.flatnonzero(selected)
    coin = rng.random(pos.size)
    out = ids.copy()
    flat = out.reshape(-1)
    flat[pos[coin < 0.8]] = mask_id
    rand_pos = pos[(coin >= 0.8) & (coin < 0.9)]
    flat[rand_pos] = random_tokens(rng, rand_pos.size, vocab_size, specials)
    labels = np.full(ids.shape, ignore_index, dtype=np.int64)
    labels.reshape(-1)[pos] = ids.reshape(-1)[pos]
    return out, labels


def random_tokens(rng: np.random.Generator, n: int, vocab_size: int, specials: np.ndarray) -> np.ndarray:
    """``n`` ids uniform over ``[0, vocab_size)`` minus ``specials``."""
    excluded = np.unique(specials[(specials >= 0) & (specials < vocab_size)])
    r = rng.integers(0, vocab_size - excluded.size, size=n, dtype=np.int64)
    for s in excluded:  # ascending: shift past each excluded id in turn
        r += r >= s
    return r


def word_start_table(vocab: Mapping[str, int], vocab_size: int, prefix: str = "##") -> np.ndarray:
    """Bool lookup ``[vocab_size]``: False for continuation pieces (``##...``), True otherwise.

    ``word_start_table(...)[input_ids]`` is the ``word_starts`` argument of the masking functions.
    """
    table = np.ones(vocab_size, dtype=bool)
    for token, idx in vocab.items():
        if token.startswith(prefix) and len(token) > len(prefix) and 0 <= idx < vocab_size:
            table[idx] = False
    return table


def _specials(special_ids: Mapping[str, int] | Sequence[int], mask_id: int | None) -> tuple[np.ndarray, int]:
    if isinstance(special_ids, Mapping):
        if mask_id is None:
            if "mask" not in special_ids:
                raise ValueError("special_ids has no 'mask' entry and no mask_id was given")
            mask_id = int(special_ids["mask"])
        ids = [int(v) for v in special_ids.values()]
    else:
        if mask_id is None:
            raise ValueError("mask_id is required when special_ids is a sequence")
        ids = [int(v) for v in special_ids]
    return np.unique(np.asarray([*ids, int(mask_id)], dtype=np.int64)), int(mask_id)
