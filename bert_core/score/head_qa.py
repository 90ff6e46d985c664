"""Extractive question answering: each row's (question, context) -> answer span in the context.

Long contexts are cut into windows overlapping by ``score.stride`` tokens and the best
span over all windows wins (:mod:`bert_core.heads.qa`). SQuAD 2.0 models (fine-tuned
with unanswerable questions) answer null when the [CLS] score beats the best span by more
than their threshold (chosen on validation; ``score.null_threshold`` overrides it); such
rows are scored, with a null ``answer`` and the no-answer probability as ``score``.

A null or empty question or context is a per-row error (``null_question``,
``empty_context``, ...), never a crash; a question cut at 64 tokens, or a context needing
more than ``score.max_windows`` windows, is scored and flagged ``truncated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.heads.qa import QaWindowing, QaWindows, choose_answers
from bertflow.bert_core.score.config import batch_token_cap
from bertflow.bert_core.score.encode import FLAG_TRUNCATED, EncodedWindow, extract_texts, merge_errors, pad_batches
from bertflow.bert_core.score.heads import Head

DEFAULT_MAX_ANSWER_LENGTH = 30
_CHARS_PER_TOKEN_CAP = 64


@dataclass
class QaBatch:
    rows: np.ndarray  # the scored rows (positions in the window)
    contexts: list[str]
    windows: QaWindows


class QaHead(Head):
    name = "qa"
    windowed = True

    def __init__(self, cfg, clf) -> None:
        super().__init__(cfg, clf)
        self.windowing = clf.reuse(("qa-windows", cfg.stride, cfg.max_windows),
                                   lambda: QaWindowing(clf.tokenizer, clf.max_length, cfg.stride, cfg.max_windows))
        self.max_answer_length = int(cfg.max_answer_length or self.meta.get("max_answer_length")
                                     or DEFAULT_MAX_ANSWER_LENGTH)
        threshold = self.meta.get("null_threshold") if self.meta.get("version_2_with_negative") else None
        self.null_threshold = cfg.null_threshold if cfg.null_threshold is not None else threshold
        self.max_chars = clf.max_length * cfg.max_windows * _CHARS_PER_TOKEN_CAP

    def check(self) -> None:
        cfg = self.cfg
        if cfg.probabilities or cfg.embeddings != "none" or cfg.tokens or cfg.text_pair_column is not None:
            raise InputError("score.probabilities, score.embeddings, score.tokens and score.text_pair_column do "
                             "not apply to question answering models (they write answer, answer_start, answer_end, "
                             "score)")

    def fields(self) -> list[pa.Field]:
        return [pa.field("answer", pa.string()), pa.field("answer_start", pa.int32()),
                pa.field("answer_end", pa.int32()), pa.field("score", pa.float32())]

    def encode(self, batch: pa.RecordBatch, inputs: tuple[str, ...], pin: bool) -> EncodedWindow:
        cfg, clf = self.cfg, self.clf
        questions = extract_texts(batch.column(inputs[0]), self.max_chars, cfg.non_string_text,
                                  null_code="null_question", empty_code="empty_question")
        contexts = extract_texts(batch.column(inputs[1]), self.max_chars, cfg.non_string_text,
                                 null_code="null_context", empty_code="empty_context")
        n = len(questions.values)
        errors = merge_errors(questions, contexts)
        valid = np.array([e is None for e in errors], dtype=bool) if n else np.zeros(0, dtype=bool)
        rows = np.flatnonzero(valid)
        if rows.size == 0:
            return EncodedWindow(n, errors, valid, [], 0, 0)
        ctx = [contexts.values[i] for i in rows]
        windows = self.windowing.encode([questions.values[i] for i in rows], ctx)
        for j in np.flatnonzero(windows.truncated | questions.cut[rows] | contexts.cut[rows]):
            errors[rows[j]] = FLAG_TRUNCATED
        types = windows.type_ids if clf.uses_token_types else None
        batches, tokens, padded = pad_batches(windows.input_ids, types, np.arange(len(windows)), cfg.batch_size,
                                              clf.pad_id, clf.pad_multiple, clf.uses_token_types,
                                              cfg.sort_window > 1, pin, batch_token_cap(cfg, clf.device.type))
        return EncodedWindow(n, errors, valid, batches, tokens, padded, QaBatch(rows, ctx, windows))

    def outputs(self, out: Any, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.start_logits.float(), out.end_logits.float()

    def columns(self, enc: EncodedWindow, results: list[tuple[Any, tuple]]) -> list[pa.Array]:
        n = enc.n
        answer: list[str | None] = [None] * n
        start = np.zeros(n, dtype=np.int32)
        end = np.zeros(n, dtype=np.int32)
        score = np.zeros(n, dtype=np.float32)
        has_span = np.zeros(n, dtype=bool)
        if enc.extra is not None:
            qb: QaBatch = enc.extra
            f = len(qb.windows)
            starts: list[np.ndarray | None] = [None] * f
            ends: list[np.ndarray | None] = [None] * f
            for rows, (s, e) in results:
                for r, w in enumerate(rows):
                    k = len(qb.windows.input_ids[w])
                    starts[w], ends[w] = s[r, :k], e[r, :k]
            found = choose_answers(starts, ends, qb.windows, qb.contexts, self.max_answer_length,
                                   self.null_threshold, len(qb.rows))
            for row, a in zip(qb.rows, found):
                score[row] = a.score
                if a.start is not None:
                    answer[row], start[row], end[row], has_span[row] = a.text, a.start, a.end, True
        return [pa.array(answer, pa.string()), pa.array(start, pa.int32(), mask=~has_span),
                pa.array(end, pa.int32(), mask=~has_span), pa.array(score, pa.float32(), mask=~enc.scored)]
