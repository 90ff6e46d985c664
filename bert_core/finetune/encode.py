"""Tokenise examples into unpadded model inputs (padding happens per batch, in :mod:`batching`).

Token classification labels the first sub-token of each word, and either nothing else
(-100: the loss ignores it, as for the special tokens) or, with a ``continuation`` map,
the word's later pieces too (``B-X`` continues as ``I-X``). ``word_starts`` remembers
where each word's first piece landed, to read predictions back per word (-1 for a word
lost to truncation or that tokenises to nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertflow.bert_core.errors import InputError

IGNORE = -100
_CHUNK = 4096  # examples per tokenizer call: bounds peak memory on large files


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list | None  # sequence: one id per example; token: one list per example (IGNORE on non-first pieces)
    word_starts: list[np.ndarray] | None = None  # token task only
    positions: np.ndarray | None = None  # qa task: (start, end) answer token per window; (0, 0): [CLS], no answer

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def require_fast(tokenizer, where: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{where}: the tokenizer is not a fast (Rust) tokenizer; add tokenizer.json or vocab.txt "
            "that transformers can convert (token classification needs word alignment)"
        )


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None,
    label_ids: Sequence[int] | None,
    max_length: int,
) -> Encoded:
    """Sequence classification inputs: ``[CLS] text [SEP] (pair [SEP])``, truncated longest-first."""
    ids: list[list[int]] = []
    types: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start : start + _CHUNK])
        chunk_pairs = list(pairs[start : start + _CHUNK]) if pairs is not None else None
        enc = tokenizer(chunk, chunk_pairs, truncation=True, max_length=max_length, return_attention_mask=False)
        ids.extend(enc["input_ids"])
        if "token_type_ids" in enc:
            types.extend(enc["token_type_ids"])
    labels = [int(x) for x in label_ids] if label_ids is not None else None
    return Encoded(ids, types if types else None, labels)


def encode_words(
    tokenizer,
    words: Sequence[Sequence[str]],
    tag_ids: Sequence[Sequence[int]] | None,
    max_length: int,
    continuation: Sequence[int] | None = None,
) -> Encoded:
    """Token classification inputs from pre-split words; labels on each word's first piece, and on its
    later pieces ``continuation[tag]`` (see :func:`labels.continuation_ids`); negative tags stay as they are."""
    require_fast(tokenizer, "token classification")
    ids: list[list[int]] = []
    types: list[list[int]] = []
    labels: list[list[int]] | None = [] if tag_ids is not None else None
    starts: list[np.ndarray] = []
    for start in range(0, len(words), _CHUNK):
        chunk = [list(w) for w in words[start : start + _CHUNK]]
        enc = tokenizer(
            chunk, is_split_into_words=True, truncation=True, max_length=max_length, return_attention_mask=False
        )
        for j, sentence in enumerate(chunk):
            word_ids = enc.word_ids(j)
            first = np.full(len(sentence), -1, dtype=np.int64)
            prev = None
            for pos, w in enumerate(word_ids):
                if w is not None and w != prev:
                    first[w] = pos
                prev = w
            starts.append(first)
            ids.append(enc["input_ids"][j])
            if "token_type_ids" in enc:
                types.append(enc["token_type_ids"][j])
            if labels is not None:
                tags = tag_ids[start + j]
                labels.append([IGNORE if w is None else _piece_tag(int(tags[w]), pos == first[w], continuation)
                               for pos, w in enumerate(word_ids)])
    return Encoded(ids, types if types else None, labels, starts)


def _piece_tag(tag: int, first: bool, continuation: Sequence[int] | None) -> int:
    if first or tag < 0:
        return tag
    return IGNORE if continuation is None else continuation[tag]
