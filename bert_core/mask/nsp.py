"""The ``nsp`` recipe: BERT segment pairs ``[CLS] A [SEP] B [SEP]`` with an is-random-next label.

Follows ``create_instances_from_document`` of Google's ``create_pretraining_data.py``:
sentences of a document accumulate into a chunk until it reaches a target length
(``max_seq_length - 3`` tokens, or with probability ``short_seq_prob`` a random length
in ``[2, max_seq_length - 3]``); A is the chunk's first ``randint(1, len(chunk) - 1)``
sentences; B is either the rest of the chunk (true next) or, with probability 0.5, a
run of sentences from a random position of another document of the same work unit,
long enough to fill the target (random next; the chunk's unused sentences are put
back); ``truncate_seq_pair`` then trims the longer side from a random end until the pair
fits.

Deliberate differences, so labels are exactly a fair coin:
- The coin is flipped first. Google forces "random next" when the chunk holds a single
  sentence, which pushes the random-next share above 50% (badly for long sentences or
  short targets). Here a one-sentence chunk with a true-next coin takes the document's
  next sentence as B; at the document's last sentence it splits that sentence at a
  random token instead.
- The random document is drawn uniformly among the *other* documents (Google retries
  10 times and may end up with the same one). A unit with a single document cannot
  make random pairs: its pairs are all true-next (counted in ``forced_true_next``).
- The short target is drawn per pair, not once per document (with book-length
  documents, a per-document draw would make 10% of the books all-short).

Pairs are spans of the unit's flat token array; :func:`bert_core.mask.sequences.assemble`
builds the rows.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from bertflow.bert_core.mask.sequences import Sequences, assemble


@dataclass
class NspStats:
    pairs: int = 0
    random_next: int = 0
    forced_true_next: int = 0
    truncated: int = 0


def nsp_pairs(ids: np.ndarray, sent_start: np.ndarray, sent_end: np.ndarray, doc_first: np.ndarray,
              doc_count: np.ndarray, max_seq_length: int, short_seq_prob: float, rng: random.Random,
              cls_id: int, sep_id: int) -> tuple[Sequences, NspStats]:
    """Segment pairs from documents given as runs of non-empty, contiguous sentences.

    Args:
        ids: the unit's flat token ids.
        sent_start, sent_end: token spans of the sentences, document after document.
        doc_first, doc_count: each document's first sentence and number of sentences (>= 2).
        rng: a ``random.Random`` (scalar draws from it are ~10x cheaper than NumPy's).
    """
    max_tokens = max_seq_length - 3
    ss, se = sent_start.tolist(), sent_end.tolist()
    firsts, counts = doc_first.tolist(), doc_count.tolist()
    n_docs = len(firsts)
    out_as, out_ae, out_bs, out_be, labels = [], [], [], [], []
    stats = NspStats()
    rand, randint = rng.random, rng.randint

    def target_length() -> int:
        return randint(2, max_tokens) if rand() < short_seq_prob else max_tokens

    for d in range(n_docs):
        f, m = firsts[d], counts[d]
        target = target_length()
        chunk0, length, i = 0, 0, 0
        while i < m:
            length += se[f + i] - ss[f + i]
            if i == m - 1 or length >= target:
                random_next = rand() < 0.5
                if random_next and n_docs < 2:
                    random_next = False
                    stats.forced_true_next += 1
                a_s = ss[f + chunk0]
                if not random_next and i == chunk0:  # one sentence in the chunk
                    if i + 1 < m:
                        i += 1  # take the next sentence as B
                    elif se[f + i] - a_s >= 2:
                        cut = a_s + randint(1, se[f + i] - a_s - 1)
                        _emit(out_as, out_ae, out_bs, out_be, labels, stats, rng, max_tokens,
                              a_s, cut, cut, se[f + i], 0)
                        break
                    elif n_docs >= 2:
                        random_next = True
                    else:
                        break
                n_chunk = i - chunk0 + 1
                a_end = chunk0 + (randint(1, n_chunk - 1) if n_chunk >= 2 else 1)  # sentences [chunk0, a_end)
                a_e = se[f + a_end - 1]
                if random_next:
                    other = randint(0, n_docs - 2)
                    other += other >= d
                    of, om = firsts[other], counts[other]
                    j = of + randint(0, om - 1)
                    b_s = ss[j]
                    want = max(target - (a_e - a_s), 1)
                    k = bisect_left(se, b_s + want, j, of + om)  # first sentence end reaching the target
                    b_e = se[min(k, of + om - 1)]
                    i = a_end - 1  # put the unused sentences back
                    _emit(out_as, out_ae, out_bs, out_be, labels, stats, rng, max_tokens, a_s, a_e, b_s, b_e, 1)
                else:
                    _emit(out_as, out_ae, out_bs, out_be, labels, stats, rng, max_tokens,
                          a_s, a_e, ss[f + a_end], se[f + i], 0)
                chunk0, length = i + 1, 0
                target = target_length()
            i += 1
    arr = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    seqs = assemble(ids, cls_id, sep_id, arr(out_as), arr(out_ae), arr(out_bs), arr(out_be),
                    np.asarray(labels, dtype=np.int8))
    return seqs, stats


def _emit(out_as, out_ae, out_bs, out_be, labels, stats: NspStats, rng: random.Random, max_tokens: int,
          a_s: int, a_e: int, b_s: int, b_e: int, label: int) -> None:
    """Truncate the pair like ``truncate_seq_pair`` and record it."""
    la, lb = a_e - a_s, b_e - b_s
    excess = la + lb - max_tokens
    if excess > 0:
        stats.truncated += 1
        # truncate_seq_pair trims the longer side one token at a time (B on a tie): first the
        # difference from the longer side, then alternately, starting with B.
        ta = min(excess, la - lb) if la > lb else 0
        tb = min(excess, lb - la) if lb >= la else 0
        rest = excess - ta - tb
        tb += (rest + 1) // 2
        ta += rest // 2
        # each trim is from the front or the back with probability 1/2
        fa = bin(rng.getrandbits(ta)).count("1") if ta else 0
        fb = bin(rng.getrandbits(tb)).count("1") if tb else 0
        a_s, a_e = a_s + fa, a_e - (ta - fa)
        b_s, b_e = b_s + fb, b_e - (tb - fb)
    out_as.append(a_s)
    out_ae.append(a_e)
    out_bs.append(b_s)
    out_be.append(b_e)
    labels.append(label)
    stats.pairs += 1
    stats.random_next += label
