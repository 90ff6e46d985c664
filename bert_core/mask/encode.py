"""Tokenize documents into one flat id array, with token offsets of documents and sentences.

Documents are cut into pieces of about ``piece_chars`` characters just before a space (a
space is a token boundary for a BERT pre-tokenizer, so the pieces' tokens concatenate to
the document's tokens). Each piece takes one of two paths that give the same ids:

- **Word cache** (the common case; ``BertNormalizer`` + ``BertPreTokenizer`` tokenizers):
  a piece whose characters the normalizer maps one-to-one and context-free (checked per
  distinct character against the Rust normalizer itself: ASCII, curly quotes, dashes, ...)
  is lower-cased in Python and split into words and punctuation with a regular
  expression equivalent to ``BertPreTokenizer`` on such text. Each distinct word is
  tokenized once by the Rust tokenizer (``encode_batch_fast``, WordPiece) and cached:
  prose repeats its words, so the tokenizer sees a small fraction of the text.
- **Tokenizer**: any other piece (accents to strip, controls, CJK, literal ``[MASK]``, ...)
  goes through ``Tokenizer.encode_batch`` whole, spread over all cores by the library.

Sentence starts (character offsets from the corpus) become token offsets: word counts
on the cached path, ``Encoding.char_to_token`` on the tokenizer path.
``tests/test_mask_encode.py`` checks both paths against the plain tokenizer.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from itertools import accumulate, chain

import numpy as np

from bertflow.bert_core.mask.tokenizer import TokenizerInfo

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = frozenset(" \t\n\r")
_MAX_CACHE = 2_000_000  # distinct words kept per process


@dataclass
class EncodedDocs:
    """Token ids of several documents, flat, with offsets.

    ``ids[doc_offsets[d]:doc_offsets[d+1]]`` are document ``d``'s tokens. With sentences,
    sentence ``j`` is ``ids[sent_starts[j]:sent_ends[j]]`` (possibly empty) and document
    ``d`` holds sentences ``doc_sent_offsets[d]:doc_sent_offsets[d+1]``.
    """

    ids: np.ndarray  # int32
    doc_offsets: np.ndarray  # int64 [n_docs + 1]
    sent_starts: np.ndarray | None = None  # int64 [n_sents]
    sent_ends: np.ndarray | None = None  # int64 [n_sents]
    doc_sent_offsets: np.ndarray | None = None  # int64 [n_docs + 1]

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_offsets)


@dataclass
class _Piece:
    text: str  # as written, or pre-normalized for the word cache
    fast: bool
    starts: list[int]  # piece-relative character offsets of the sentences that start here
    chunks: list[list[int]] | None = None  # the piece's ids, as consecutive lists
    n_tokens: int = 0
    token_starts: list[int] | None = None  # piece-relative token offsets of those sentences (-1: none)


class DocumentEncoder:
    """Encodes batches of documents; one per worker process (it caches words and character checks)."""

    def __init__(self, tokenizer, info: TokenizerInfo, piece_chars: int = 2048, batch_chars: int = 1 << 20,
                 fast_path: bool = True) -> None:
        self.tokenizer = tokenizer
        self.piece_chars = piece_chars
        self.batch_chars = batch_chars
        self.lowercase = bool(info.lowercase)
        self.words = None  # the tokenizer for single words (no normalizer: words come pre-normalized)
        if fast_path and _fast_path_applies(info):
            from tokenizers import Tokenizer

            self.words = Tokenizer.from_str(tokenizer.to_str())
            self.words.normalizer = None
            self.words.no_truncation()
            self.words.no_padding()
        self._safe: set[str] = {chr(c) for c in range(0x20, 0x7F)} | set(_WHITESPACE)
        self._unsafe: set[str] = set()
        self._punct: set[str] = set(string.punctuation)
        self._split = self._word_regex()
        self._cache: dict[str, list[int]] = {}
        self._added = [t.content.lower() for t in tokenizer.get_added_tokens_decoder().values()]

    def encode(self, texts: list[str], sentence_starts: list[np.ndarray] | None = None) -> EncodedDocs:
        """Tokenize ``texts`` (no special tokens added); with sentence starts, map them to tokens."""
        parts = []
        batch: list[int] = []
        size = 0
        for d, text in enumerate(texts):
            batch.append(d)
            size += len(text)
            if size >= self.batch_chars:
                parts.append(self._encode_batch(texts, sentence_starts, batch))
                batch, size = [], 0
        if batch or not parts:
            parts.append(self._encode_batch(texts, sentence_starts, batch))
        return _concat(parts, with_sentences=sentence_starts is not None)

    # ------------------------------------------------------------ one batch of documents

    def _encode_batch(self, texts, sentence_starts, docs: list[int]) -> EncodedDocs:
        with_sentences = sentence_starts is not None
        pieces: list[_Piece] = []
        doc_first_piece: list[int] = []
        for d in docs:
            doc_first_piece.append(len(pieces))
            text = texts[d]
            starts = sentence_starts[d].tolist() if with_sentences else []
            j = 0
            for a, b in _cuts(text, self.piece_chars):
                k = j
                while k < len(starts) and starts[k] < b:
                    k += 1
                rel = [c - a for c in starts[j:k]]
                j = k
                pieces.append(self._piece(text[a:b], rel))
        doc_first_piece.append(len(pieces))
        self._run_word_path([p for p in pieces if p.fast])
        self._run_tokenizer_path([p for p in pieces if not p.fast], with_sentences)
        piece_len = np.fromiter((p.n_tokens for p in pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(chain.from_iterable(chain.from_iterable(p.chunks for p in pieces)), dtype=np.int32,
                          count=int(piece_len.sum()))
        piece_off = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum(piece_len, out=piece_off[1:])
        doc_offsets = piece_off[doc_first_piece]
        if not with_sentences:
            return EncodedDocs(ids, doc_offsets)
        offs = piece_off.tolist()
        starts_out, doc_sent = [], [0]
        for i in range(len(docs)):
            first, last = doc_first_piece[i], doc_first_piece[i + 1]
            out = [offs[p] + t if t >= 0 else -1 for p in range(first, last) for t in pieces[p].token_starts]
            nxt = offs[last]
            for j in range(len(out) - 1, -1, -1):  # a sentence without tokens starts where the next one does
                if out[j] < 0:
                    out[j] = nxt
                nxt = out[j]
            starts_out.append(np.maximum.accumulate(np.asarray(out, dtype=np.int64)))
            doc_sent.append(doc_sent[-1] + len(out))
        sent_starts = np.concatenate(starts_out) if starts_out else np.zeros(0, dtype=np.int64)
        doc_sent_offsets = np.asarray(doc_sent, dtype=np.int64)
        sent_ends = np.empty_like(sent_starts)
        if sent_starts.size:
            sent_ends[:-1] = sent_starts[1:]
            has = np.diff(doc_sent_offsets) > 0
            sent_ends[doc_sent_offsets[1:][has] - 1] = doc_offsets[1:][has]
        return EncodedDocs(ids, doc_offsets, sent_starts, sent_ends, doc_sent_offsets)

    def _piece(self, text: str, starts: list[int]) -> _Piece:
        normalized = self._prenormalize(text) if self.words is not None else None
        if normalized is not None and all(self._at_word_boundary(normalized, c) for c in starts):
            return _Piece(normalized, True, starts)
        return _Piece(text, False, starts)

    # ------------------------------------------------------------ the word-cache path

    def _run_word_path(self, pieces: list[_Piece]) -> None:
        split, cache = self._split, self._cache
        words_of = []
        missing: set[str] = set()
        for p in pieces:
            if p.starts:
                bounds = [0, *p.starts, len(p.text)]
                segments = [split.findall(p.text, a, b) for a, b in zip(bounds, bounds[1:])]
                words = list(chain.from_iterable(segments))
                marks = list(accumulate(len(s) for s in segments[:-1]))  # words before each sentence start
            else:
                words, marks = split.findall(p.text), []
            words_of.append((words, marks))
            missing.update(set(words).difference(cache))  # (the dict fast path: O(len(words)))
        if missing:
            if len(cache) + len(missing) > _MAX_CACHE:
                cache.clear()
            new = list(missing)
            for w, e in zip(new, self.words.encode_batch_fast(new, add_special_tokens=False)):
                cache[w] = e.ids
        for p, (words, marks) in zip(pieces, words_of):
            p.chunks = list(map(cache.__getitem__, words))
            if p.starts:
                lengths = [0, *accumulate(map(len, p.chunks))]
                p.n_tokens = lengths[-1]
                p.token_starts = [lengths[m] for m in marks]
            else:
                p.n_tokens = sum(map(len, p.chunks))
                p.token_starts = []

    def _at_word_boundary(self, text: str, c: int) -> bool:
        if c <= 0 or c >= len(text):
            return True
        before, at = text[c - 1], text[c]
        return before.isspace() or at.isspace() or before in self._punct or at in self._punct

    def _word_regex(self) -> re.Pattern:
        """Words and single punctuation characters, split at whitespace: BertPreTokenizer on safe text."""
        punct = re.escape("".join(sorted(self._punct)))
        return re.compile(rf"[^\s{punct}]+|[{punct}]")

    # ------------------------------------------------------------ the tokenizer path

    def _run_tokenizer_path(self, pieces: list[_Piece], with_sentences: bool) -> None:
        if not pieces:
            return
        method = self.tokenizer.encode_batch if with_sentences else self.tokenizer.encode_batch_fast
        for p, enc in zip(pieces, method([p.text for p in pieces], add_special_tokens=False)):
            ids = enc.ids
            p.chunks, p.n_tokens = [ids], len(ids)
            p.token_starts = [_first_token(enc, c, nxt) for c, nxt in zip(p.starts, [*p.starts[1:], len(p.text)])]
            if p.token_starts and p.token_starts[-1] < 0:
                p.token_starts[-1] = len(ids)  # the last sentence's first token is in a later piece

    # ------------------------------------------------------------ which pieces are safe

    def _prenormalize(self, piece: str) -> str | None:
        """The piece as the normalizer would make it, if that is a plain (lower-)casing; else None."""
        if piece.isascii():
            if _CONTROL.search(piece):
                return None
        else:
            new = set(piece) - self._safe
            if new:
                if new & self._unsafe:
                    return None
                for ch in new:
                    (self._safe if self._char_is_safe(ch) else self._unsafe).add(ch)
                if new & self._unsafe:
                    return None
        out = piece.lower() if self.lowercase else piece
        if self._added and any(a in out for a in self._added):
            return None  # added tokens match the raw text: leave those pieces to the tokenizer
        return out

    def _char_is_safe(self, ch: str) -> bool:
        if ch in _WHITESPACE:
            return True
        if unicodedata.category(ch)[0] in "CMZ" or ch == "\u03a3":  # controls, marks, spaces; final-sigma casing
            return False
        expected = ch.lower() if self.lowercase else ch
        safe = len(expected) == 1 and self.tokenizer.normalizer.normalize_str(ch) == expected
        if safe and unicodedata.category(expected).startswith("P") and expected not in self._punct:
            self._punct.add(expected)  # BertPreTokenizer isolates every Unicode punctuation character
            self._split = self._word_regex()
        return safe


def _fast_path_applies(info: TokenizerInfo) -> bool:
    norm, pre = info.normalizer or {}, info.pre_tokenizer or {}
    return norm.get("type") == "BertNormalizer" and pre.get("type") == "BertPreTokenizer"


def _cuts(text: str, piece_chars: int):
    """``(start, end)`` character ranges of about ``piece_chars``, cut just before a space."""
    n = len(text)
    a = 0
    while n - a > piece_chars:
        b = text.find(" ", a + piece_chars)
        if b < 0:
            break
        yield a, b
        a = b
    yield a, n


def _first_token(enc, c: int, stop: int) -> int:
    """Index of the first token at a character in ``[c, stop)``, or -1 if there is none."""
    while c < stop:
        t = enc.char_to_token(c)
        if t is not None:
            return t
        c += 1
    return -1


def _concat(parts: list[EncodedDocs], with_sentences: bool) -> EncodedDocs:
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts])
    base = np.cumsum([0] + [len(p.ids) for p in parts])
    doc_offsets = np.concatenate([p.doc_offsets[:-1] + base[i] for i, p in enumerate(parts)] + [base[-1:]])
    if not with_sentences:
        return EncodedDocs(ids, doc_offsets.astype(np.int64))
    sent_starts = np.concatenate([p.sent_starts + base[i] for i, p in enumerate(parts)])
    sent_ends = np.concatenate([p.sent_ends + base[i] for i, p in enumerate(parts)])
    sbase = np.cumsum([0] + [len(p.sent_starts) for p in parts])
    doc_sent = np.concatenate([p.doc_sent_offsets[:-1] + sbase[i] for i, p in enumerate(parts)] + [sbase[-1:]])
    return EncodedDocs(ids, doc_offsets.astype(np.int64), sent_starts, sent_ends, doc_sent.astype(np.int64))
