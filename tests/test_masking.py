"""Statistical and property tests of the shared NumPy masking (bert_core.mask.masking)."""

from __future__ import annotations

import numpy as np
import pytest

from bertflow.bert_core.mask.masking import (
    IGNORE_INDEX,
    mask_batch,
    mask_tokens,
    random_tokens,
    select_positions,
    word_start_table,
)

SPECIALS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB = 30522


def make_batch(rows: int, length: int, seed: int = 0, min_len: int | None = None):
    """Padded [rows, length] ids: [CLS] ... [SEP] + [PAD], with a sprinkle of [UNK] inside."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len or length, length + 1, size=rows)
    ids = rng.integers(5, VOCAB, size=(rows, length))
    ids[rng.random((rows, length)) < 0.01] = SPECIALS["unk"]
    attention = np.arange(length)[None, :] < lengths[:, None]
    ids[~attention] = SPECIALS["pad"]
    ids[:, 0] = SPECIALS["cls"]
    ids[np.arange(rows), lengths - 1] = SPECIALS["sep"]
    return ids, attention.astype(np.int64)


def candidates(ids, attention):
    return ~np.isin(ids, list(SPECIALS.values())) & (attention == 1)


@pytest.mark.parametrize("prob", [0.15, 0.4])
def test_selected_rate_is_masked_lm_prob(prob):
    # 2,000 rows x ~126 candidates = ~250k candidate tokens. Rate = selected / candidate tokens
    # (specials and padding excluded). The cap (128) is above every row's target, so it never binds.
    ids, att = make_batch(2000, 128)
    _, labels = mask_batch(ids, att, np.random.default_rng(1), vocab_size=VOCAB, special_ids=SPECIALS,
                           masked_lm_prob=prob, max_predictions=128)
    selected = labels != IGNORE_INDEX
    rate = selected.sum() / candidates(ids, att).sum()
    assert abs(rate - prob) < 0.005, rate


def test_rate_holds_for_short_varied_rows_and_whole_words():
    # rows of 20..128 tokens, words of 1..4 pieces; rate over >100k candidates
    ids, att = make_batch(2000, 128, seed=2, min_len=20)
    rng = np.random.default_rng(3)
    starts = rng.random(ids.shape) < 0.6
    _, labels = mask_batch(ids, att, np.random.default_rng(4), vocab_size=VOCAB, special_ids=SPECIALS,
                           masked_lm_prob=0.15, max_predictions=128, word_starts=starts)
    cand = candidates(ids, att)
    assert cand.sum() > 100_000
    rate = (labels != IGNORE_INDEX).sum() / cand.sum()
    assert abs(rate - 0.15) < 0.005, rate


def test_80_10_10_replacement_split():
    ids, att = make_batch(6000, 128, seed=5)  # ~110k selected tokens
    out, labels = mask_batch(ids, att, np.random.default_rng(6), vocab_size=VOCAB, special_ids=SPECIALS)
    sel = labels != IGNORE_INDEX
    n = sel.sum()
    assert n > 100_000
    to_mask = (out[sel] == SPECIALS["mask"]).mean()
    unchanged = (out[sel] == ids[sel]).mean()
    randomised = ((out[sel] != SPECIALS["mask"]) & (out[sel] != ids[sel])).mean()
    assert abs(to_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01, (
        to_mask, unchanged, randomised)
    assert (labels[sel] == ids[sel]).all()  # labels hold the original ids
    assert (out[~sel] == ids[~sel]).all()  # nothing else changes


def test_specials_and_padding_are_never_selected_nor_drawn():
    ids, att = make_batch(3000, 64, seed=7, min_len=3)
    rng = np.random.default_rng(8)
    ids[(rng.random(ids.shape) < 0.05) & (att == 1)] = SPECIALS["mask"]  # literal [MASK]s in the input
    out, labels = mask_batch(ids, att, np.random.default_rng(9), vocab_size=VOCAB, special_ids=SPECIALS,
                             masked_lm_prob=0.5, max_predictions=64)
    sel = labels != IGNORE_INDEX
    assert not (sel & ~candidates(ids, att)).any()
    replaced = sel & (out != ids) & (out != SPECIALS["mask"])
    assert replaced.sum() > 1000
    assert not np.isin(out[replaced], list(SPECIALS.values())).any()


def test_whole_word_masking_never_splits_a_word():
    ids, att = make_batch(3000, 128, seed=10)
    rng = np.random.default_rng(11)
    starts = rng.random(ids.shape) < 0.5  # words of ~2 pieces, some long
    _, labels = mask_batch(ids, att, np.random.default_rng(12), vocab_size=VOCAB, special_ids=SPECIALS,
                           word_starts=starts, max_predictions=20)
    sel = labels != IGNORE_INDEX
    cand = candidates(ids, att)
    continuation = cand[:, 1:] & cand[:, :-1] & ~starts[:, 1:]  # piece p+1 belongs to the word of piece p
    assert continuation.sum() > 100_000
    assert (sel[:, 1:][continuation] == sel[:, :-1][continuation]).all()
    assert sel.sum(axis=1).max() <= 20


@pytest.mark.parametrize("whole_word", [False, True])
def test_cap_is_never_exceeded(whole_word):
    ids, att = make_batch(2000, 128, seed=13)
    starts = np.random.default_rng(14).random(ids.shape) < 0.3 if whole_word else None
    _, labels = mask_batch(ids, att, np.random.default_rng(15), vocab_size=VOCAB, special_ids=SPECIALS,
                           masked_lm_prob=0.3, max_predictions=7, word_starts=starts)
    per_row = (labels != IGNORE_INDEX).sum(axis=1)
    assert per_row.max() <= 7
    if not whole_word:
        assert (per_row == 7).all()  # 0.3 * ~126 >> 7: the cap binds exactly


def test_at_least_one_prediction_per_nonempty_row():
    ids, att = make_batch(500, 8, seed=16, min_len=3)  # 1..6 candidates: p * n < 1
    _, labels = mask_batch(ids, att, np.random.default_rng(17), vocab_size=VOCAB, special_ids=SPECIALS)
    has_cand = candidates(ids, att).any(axis=1)
    assert ((labels != IGNORE_INDEX).sum(axis=1)[has_cand] >= 1).all()


def test_same_generator_state_same_masks_other_seed_other_masks():
    ids, att = make_batch(200, 64, seed=18)
    kw = dict(vocab_size=VOCAB, special_ids=SPECIALS)
    a = mask_batch(ids, att, np.random.default_rng([1, 2]), **kw)
    b = mask_batch(ids, att, np.random.default_rng([1, 2]), **kw)
    c = mask_batch(ids, att, np.random.default_rng([1, 3]), **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_input_dtype_kept_and_input_not_modified():
    ids, att = make_batch(50, 32, seed=19)
    ids16 = ids.astype(np.uint16)
    before = ids16.copy()
    out, labels = mask_batch(ids16, att, np.random.default_rng(0), vocab_size=VOCAB, special_ids=SPECIALS)
    assert out.dtype == np.uint16 and labels.dtype == np.int64
    assert np.array_equal(ids16, before)


def test_mask_tokens_is_the_one_row_case_of_the_batch_function():
    ids, att = make_batch(1, 128, seed=20)
    special = ~candidates(ids, att)[0]
    masked, positions, originals = mask_tokens(ids[0], special, None, np.random.default_rng(21), 0.15, 20,
                                               VOCAB, SPECIALS["mask"], special_ids=list(SPECIALS.values()))
    out, labels = mask_batch(ids, att, np.random.default_rng(21), vocab_size=VOCAB, special_ids=SPECIALS)
    assert np.array_equal(masked, out[0])
    assert np.array_equal(positions, np.flatnonzero(labels[0] != IGNORE_INDEX))
    assert np.all(np.diff(positions) > 0)
    assert np.array_equal(originals, ids[0, positions])


def test_rows_without_candidates_are_left_alone():
    ids = np.zeros((3, 10), dtype=np.int64)  # all padding
    ids[1, :2] = [2, 3]  # [CLS] [SEP]
    selected = select_positions(ids.shape, np.isin(ids, [0, 2, 3]), None, np.random.default_rng(0), 0.15, 5)
    assert not selected.any()


def test_random_tokens_are_uniform_over_non_specials():
    specials = np.asarray([0, 3, 7, 49])
    draws = random_tokens(np.random.default_rng(22), 460_000, 50, specials)
    counts = np.bincount(draws, minlength=50)
    assert counts[specials].sum() == 0
    others = np.delete(counts, specials)
    assert np.abs(others / others.mean() - 1).max() < 0.05  # ~10k per id: 5% is > 5 sigma


def test_word_start_table_marks_continuation_pieces():
    vocab = {"[PAD]": 0, "the": 1, "##s": 2, "run": 3, "##ning": 4, "#": 5, "##": 6}
    table = word_start_table(vocab, 8)
    assert table.tolist() == [True, True, False, True, False, True, True, True]


def test_special_ids_as_a_sequence_need_mask_id():
    ids, att = make_batch(4, 16)
    with pytest.raises(ValueError, match="mask_id"):
        mask_batch(ids, att, np.random.default_rng(0), vocab_size=VOCAB, special_ids=[0, 1, 2, 3])
    out, _ = mask_batch(ids, att, np.random.default_rng(0), vocab_size=VOCAB, special_ids=[0, 1, 2, 3], mask_id=4)
    assert out.shape == ids.shape
