"""Token classification (NER): each row's entity spans, with character offsets into its text.

A text longer than one window (``max_length`` tokens) is cut into windows that overlap
by ``score.stride`` tokens, as transformers' pipeline does with ``stride``; the windows'
token probabilities are merged back into one sequence (each token from the window where
it has the most context) and only then grouped into entities
(:mod:`bert_core.heads.entities`, ``score.aggregation``). Nothing is truncated unless a
row needs more than ``score.max_windows`` windows (flagged ``truncated``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.heads.entities import TagSet, aggregate, merge_windows, subword_flags
from bertflow.bert_core.score.config import batch_token_cap
from bertflow.bert_core.score.encode import FLAG_TRUNCATED, EncodedWindow, extract_texts, pad_batches
from bertflow.bert_core.score.heads import Head

ENTITY = pa.struct([pa.field("label", pa.string()), pa.field("start", pa.int32()), pa.field("end", pa.int32()),
                    pa.field("text", pa.string()), pa.field("score", pa.float32())])
_CHARS_PER_TOKEN_CAP = 64  # as the sequence head: text beyond max_windows windows' worth of this is cut first


@dataclass
class TokenWindows:
    """A window of rows as the model saw them: each scored row's text and its tokenizer windows."""

    rows: np.ndarray  # the scored rows (positions in the window)
    texts: list[str]
    encodings: list[list[Any]]  # per scored row, its windows (tokenizers Encodings)
    first_feature: np.ndarray  # per scored row, the number of its first window among the model's inputs


def _windowing(clf, stride: int):
    """A copy of the model's tokenizer that returns a long text's overflowing windows, ``stride`` tokens apart."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(clf.tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length=clf.max_length, stride=stride, strategy="longest_first")
    return tok


class TokenHead(Head):
    name = "token"
    windowed = True

    def __init__(self, cfg, clf) -> None:
        super().__init__(cfg, clf)
        specials = clf.tokenizer.post_processor.num_special_tokens_to_add(False) if clf.tokenizer.post_processor else 0
        if cfg.stride >= clf.max_length - specials:
            raise ValueError(f"score.stride ({cfg.stride}) must be below the window's {clf.max_length - specials} "
                             f"text tokens (max_length {clf.max_length} less {specials} special tokens)")
        self.tokenizer = clf.reuse(("token-windows", cfg.stride), lambda: _windowing(clf, cfg.stride))
        self.tags = TagSet.of(clf.labels)
        self.word_pieces = bool(getattr(self.tokenizer.model, "continuing_subword_prefix", None))
        self.max_chars = clf.max_length * cfg.max_windows * _CHARS_PER_TOKEN_CAP

    def check(self) -> None:
        if self.cfg.probabilities or self.cfg.embeddings != "none" or self.cfg.text_pair_column is not None:
            raise InputError("score.probabilities, score.embeddings and score.text_pair_column are for sequence "
                             "classifiers; this is a token classifier (it writes an entities column)")

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("entities", pa.list_(ENTITY))]
        if self.cfg.tokens:
            fields += [pa.field("tokens", pa.list_(pa.string())), pa.field("tags", pa.list_(pa.string()))]
        return fields

    def encode(self, batch: pa.RecordBatch, inputs: tuple[str, ...], pin: bool) -> EncodedWindow:
        cfg, clf = self.cfg, self.clf
        texts = extract_texts(batch.column(inputs[0]), self.max_chars, cfg.non_string_text)
        n = len(texts.values)
        errors = list(texts.errors)
        valid = np.array([e is None for e in errors], dtype=bool) if n else np.zeros(0, dtype=bool)
        rows = np.flatnonzero(valid)
        if rows.size == 0:
            return EncodedWindow(n, errors, valid, [], 0, 0)
        values = [texts.values[i] for i in rows]
        encodings, ids, first = [], [], np.zeros(len(rows), dtype=np.int64)
        for j, enc in enumerate(self.tokenizer.encode_batch(values)):
            windows = [enc, *enc.overflowing]
            if len(windows) > cfg.max_windows or texts.cut[rows[j]]:
                windows = windows[:cfg.max_windows]
                errors[rows[j]] = FLAG_TRUNCATED
            first[j] = len(ids)
            encodings.append(windows)
            ids.extend(w.ids for w in windows)
        batches, tokens, padded = pad_batches(ids, None, np.arange(len(ids)), cfg.batch_size, clf.pad_id,
                                              clf.pad_multiple, clf.uses_token_types, cfg.sort_window > 1, pin,
                                              batch_token_cap(cfg, clf.device.type))
        return EncodedWindow(n, errors, valid, batches, tokens, padded, TokenWindows(rows, values, encodings, first))

    def outputs(self, out: Any, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.softmax(out.logits.float(), dim=-1),)

    def columns(self, enc: EncodedWindow, results: list[tuple[Any, tuple]]) -> list[pa.Array]:
        n = enc.n
        found: list[list] = [[] for _ in range(n)]
        tokens: list[list[str] | None] = [None] * n
        tags: list[list[str] | None] = [None] * n
        if enc.extra is not None:
            by_window = {}
            for rows, (probs,) in results:
                for r, w in enumerate(rows):
                    by_window[int(w)] = probs[r]
            tw: TokenWindows = enc.extra
            for j, row in enumerate(tw.rows):
                text, windows = tw.texts[j], tw.encodings[j]
                probs, offsets, pieces = self._merged(windows, [by_window[int(tw.first_feature[j]) + k]
                                                                 for k in range(len(windows))])
                subword = None
                if self.cfg.aggregation != "simple":
                    subword = subword_flags(text, pieces[0], pieces[1], offsets, self.clf.unk_id, self.word_pieces)
                found[row] = aggregate(text, probs, offsets, self.tags, self.cfg.aggregation, subword)
                if self.cfg.tokens:
                    tokens[row] = list(pieces[0])
                    tags[row] = [self.tags.labels[i] for i in probs.argmax(axis=1)] if len(probs) else []
        missing = ~enc.scored
        counts = np.zeros(n + 1, dtype=np.int32)
        counts[1:] = np.cumsum([len(f) for f in found])
        flat = [e for f in found for e in f]
        struct = pa.StructArray.from_arrays(
            [pa.array([e.label for e in flat], pa.string()), pa.array([e.start for e in flat], pa.int32()),
             pa.array([e.end for e in flat], pa.int32()), pa.array([e.text for e in flat], pa.string()),
             pa.array([e.score for e in flat], pa.float32())], fields=list(ENTITY))
        cols = [pa.ListArray.from_arrays(pa.array(counts), struct, mask=pa.array(missing))]
        if self.cfg.tokens:
            cols += [pa.array(tokens, pa.list_(pa.string())), pa.array(tags, pa.list_(pa.string()))]
        return cols

    def _merged(self, windows: list, probs: list[np.ndarray]):
        """One sequence of content tokens from a row's windows: probabilities, offsets and (tokens, ids)."""
        p, o, t, i = [], [], [], []
        need_pieces = self.cfg.aggregation != "simple" or self.cfg.tokens
        for w, pw in zip(windows, probs):
            content = np.asarray(w.special_tokens_mask, dtype=bool) == 0
            p.append(pw[:len(content)][content])
            o.append(np.asarray(w.offsets, dtype=np.int64).reshape(-1, 2)[content])
            if need_pieces:
                t.append(np.asarray(w.tokens, dtype=object)[content])
                i.append(np.asarray(w.ids, dtype=np.int64)[content])
        stride = self.cfg.stride
        pieces = (merge_windows(t, stride), merge_windows(i, stride)) if need_pieces else (None, None)
        return merge_windows(p, stride), merge_windows(o, stride), pieces
