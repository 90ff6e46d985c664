"""Token-classification outputs -> entity spans, the way transformers' token-classification pipeline groups them.

Input per text: one probability row per (non-special) token, in text order, with each
token's character offsets into the original text. Strategies (``aggregation_strategy``):

- ``simple``: each token takes its best tag; adjacent tokens with the same entity type
  are merged unless the later one is ``B-``; a group's score is the mean of its tokens';
- ``first`` / ``max`` / ``average``: tokens are first merged into words (a word-piece
  that continues a word joins it) and the word takes the tag of its first piece, of its
  most confident piece, or of the mean of its pieces' probabilities; then words are
  grouped as in ``simple``.

Groups whose type is in ``ignore`` (``O``) are dropped. Everything is vectorised with
NumPy: the per-token Python loops of the pipeline are what makes it slow.

Long texts are scored in overlapping windows; :func:`merge_windows` joins the windows'
rows back into one sequence, each token taken from the window where it has the most
context on both sides (the middle of the overlap is the switch-over point), before any
grouping. The pipeline instead groups each window apart and then drops overlapping
entities, which can cut an entity at a window edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("simple", "first", "max", "average")


@dataclass(frozen=True)
class Entity:
    label: str  # the entity type: the tag without its B-/I- prefix
    start: int  # character offsets into the original text, end exclusive
    end: int
    text: str  # text[start:end]
    score: float  # mean probability of the tokens (or words) in the span


@dataclass(frozen=True)
class TagSet:
    """A label list split into entity type and B-ness once, so grouping is array arithmetic."""

    labels: tuple[str, ...]
    type_of: np.ndarray  # label id -> type id
    is_begin: np.ndarray  # label id -> the label starts with "B-"
    types: tuple[str, ...]  # type id -> entity type name
    ignored: np.ndarray  # type id -> dropped from the output ("O")

    @classmethod
    def of(cls, labels: Sequence[str], ignore: Sequence[str] = ("O",)) -> TagSet:
        types: list[str] = []
        type_of, begin = [], []
        for label in labels:
            bi, kind = _split_tag(label)
            if kind not in types:
                types.append(kind)
            type_of.append(types.index(kind))
            begin.append(bi == "B")
        # The pipeline compares the group's type (the label after its first "-") with ignore_labels.
        ignored = np.array([t in set(ignore) for t in types], dtype=bool)
        return cls(tuple(labels), np.array(type_of, dtype=np.int64), np.array(begin, dtype=bool), tuple(types),
                   ignored)


def _split_tag(label: str) -> tuple[str, str]:
    """``B-PER`` -> (B, PER); ``I-PER`` -> (I, PER); anything else continues: (I, label) (as the pipeline's get_tag)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def subword_flags(text: str, tokens: Sequence[str], ids: Sequence[int], offsets: np.ndarray, unk_id: int | None,
                  word_pieces: bool) -> np.ndarray:
    """Which tokens continue the word before them (the pipeline's ``is_subword``).

    With a word-piece vocabulary (a ``##`` continuing prefix) a token continues a word when
    its string is longer than the text it covers; otherwise (BPE without prefix) when no
    space precedes it. An unknown token always starts a word.
    """
    n = len(tokens)
    flags = np.zeros(n, dtype=bool)
    for i in range(n):
        s, e = int(offsets[i, 0]), int(offsets[i, 1])
        if word_pieces:
            flags[i] = len(tokens[i]) != e - s
        else:
            flags[i] = s > 0 and " " not in text[s - 1:s + 1]
        if unk_id is not None and ids[i] == unk_id:
            flags[i] = False
    return flags


def aggregate(text: str, probs: np.ndarray, offsets: np.ndarray, tags: TagSet, strategy: str = "simple",
              subword: np.ndarray | None = None) -> list[Entity]:
    """Entity spans of one text from its tokens' probabilities (``probs``: tokens x labels, float).

    ``offsets``: tokens x 2 character offsets; ``subword`` (word strategies only): which
    tokens continue a word (:func:`subword_flags`).
    """
    n = len(probs)
    if n == 0:
        return []
    if strategy == "simple":
        label = probs.argmax(axis=1)
        score = probs[np.arange(n), label]
        starts, ends = offsets[:, 0], offsets[:, 1]
    elif strategy in ("first", "max", "average"):
        if subword is None:
            raise ValueError(f"aggregation {strategy!r} needs the sub-word flags")
        label, score, starts, ends = _words(probs, offsets, subword, strategy)
    else:
        raise ValueError(f"unknown aggregation strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    return _group(text, label, score, starts, ends, tags)


def _words(probs: np.ndarray, offsets: np.ndarray, subword: np.ndarray, strategy: str):
    """Merge word pieces into words: (label, score, start, end) per word."""
    first = ~subword.copy()
    first[0] = True
    heads = np.flatnonzero(first)  # each word's first token
    lasts = np.append(heads[1:], len(probs)) - 1
    if strategy == "first":
        word_probs = probs[heads]
    elif strategy == "max":
        word_of = np.cumsum(first) - 1
        best = probs.max(axis=1)
        order = np.lexsort((-best, word_of))  # stable: the first of equally confident pieces, as max() picks
        pick = order[np.searchsorted(word_of[order], np.arange(len(heads)))]
        word_probs = probs[pick]
    else:
        word_probs = np.add.reduceat(probs, heads, axis=0) / np.diff(np.append(heads, len(probs)))[:, None]
    label = word_probs.argmax(axis=1)
    score = word_probs[np.arange(len(heads)), label]
    return label, score, offsets[heads, 0], offsets[lasts, 1]


def _group(text: str, label: np.ndarray, score: np.ndarray, starts: np.ndarray, ends: np.ndarray,
           tags: TagSet) -> list[Entity]:
    kind = tags.type_of[label]
    new = np.ones(len(label), dtype=bool)
    new[1:] = (kind[1:] != kind[:-1]) | tags.is_begin[label[1:]]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:], len(label)) - 1
    keep = ~tags.ignored[kind[firsts]]
    if not keep.any():
        return []
    sums = np.add.reduceat(score.astype(np.float64), firsts)
    means = sums / (lasts - firsts + 1)
    out = []
    for g in np.flatnonzero(keep):
        s, e = int(starts[firsts[g]]), int(ends[lasts[g]])
        out.append(Entity(tags.types[kind[firsts[g]]], s, e, text[s:e], float(means[g])))
    return out


def merge_windows(rows: Sequence[np.ndarray], stride: int) -> np.ndarray:
    """One row per token from overlapping windows (each ``rows[i]``: the window's content tokens, first axis).

    Consecutive windows share ``stride`` tokens; in the shared stretch the first half comes
    from the earlier window and the second half from the later one, so every token is
    read where it has the most context.
    """
    if len(rows) == 1:
        return rows[0]
    keep_back = stride - stride // 2  # of each overlap, the later window's share
    parts = []
    for i, r in enumerate(rows):
        lo = stride // 2 if i > 0 else 0
        hi = len(r) - keep_back if i < len(rows) - 1 else len(r)
        parts.append(r[lo:hi])
    return np.concatenate(parts, axis=0)
