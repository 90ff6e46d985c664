"""Extractive question answering: (question, context) -> overlapping windows -> the best answer span.

Windows (features): ``[CLS] question [SEP] context-window [SEP]``, the context cut into
windows of the room left by the question that overlap by ``stride`` tokens (the
tokenizer's ``only_second`` truncation with overflow, as SQuAD fine-tuning does), each
token with its character offsets into the context. A question longer than
:data:`MAX_QUESTION_TOKENS` (or half the window) is cut there: a question cannot crowd
the context out.

Decoding (:func:`best_spans`): every (start, end) pair of context tokens with
``start <= end < start + max_answer_length`` is scored ``start_logit + end_logit``; the
``n_best`` highest are exact (no top-k-of-each-side shortcut). Across a question's
windows the highest logit sum wins, as in BERT's ``run_squad``; its ``score`` is the
span's probability within its window (softmax over the context tokens and [CLS] of
start and end, multiplied), as transformers' question-answering pipeline reports it.
SQuAD 2.0: ``null_margin`` = the smallest [CLS] score over the windows minus the best
span's; the question has no answer when it exceeds the model's threshold, chosen on
validation at fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_QUESTION_TOKENS = 64  # as BERT's run_squad (max_query_length)
_CHUNK = 128  # windows decoded at once


@dataclass
class QaWindows:
    """The windows of a batch of (question, context) pairs."""

    input_ids: list[list[int]]
    type_ids: list[list[int]]
    offsets: list[np.ndarray]  # per window: tokens x 2 character offsets into the context (0, 0 outside it)
    context: list[np.ndarray]  # per window: bool per token, True for context tokens
    example: np.ndarray  # window -> index of its pair
    truncated: np.ndarray  # per pair: the question was cut, or the context needed more than max_windows windows

    def __len__(self) -> int:
        return len(self.input_ids)


class QaWindowing:
    """Two configured copies of a fast tokenizer: one measures questions, one cuts pairs into windows."""

    def __init__(self, tokenizer, max_length: int, stride: int, max_windows: int | None = None) -> None:
        """``tokenizer``: a ``tokenizers.Tokenizer`` (a transformers fast tokenizer's ``backend_tokenizer``)."""
        from tokenizers import Tokenizer

        spec = tokenizer.to_str()
        self.questions = Tokenizer.from_str(spec)
        self.questions.no_truncation()
        self.questions.no_padding()
        self.pairs = Tokenizer.from_str(spec)
        self.pairs.no_padding()
        specials = self.pairs.post_processor.num_special_tokens_to_add(True) if self.pairs.post_processor else 0
        self.question_cap = min(MAX_QUESTION_TOKENS, (max_length - specials) // 2)
        room = max_length - specials - self.question_cap
        if stride >= room:
            raise ValueError(f"stride {stride} leaves no room to move forward: windows of {max_length} tokens hold "
                             f"a question of up to {self.question_cap} tokens, {specials} special tokens and the "
                             f"context; use a stride below {room} or a larger max_length")
        self.pairs.enable_truncation(max_length=max_length, stride=stride, strategy="only_second")
        self.max_length, self.stride, self.max_windows = max_length, stride, max_windows

    def encode(self, questions: Sequence[str], contexts: Sequence[str]) -> QaWindows:
        """Cut each (question, context) pair into windows (in order; one pair may give several)."""
        n = len(questions)
        truncated = np.zeros(n, dtype=bool)
        questions = list(questions)
        for i, enc in enumerate(self.questions.encode_batch(questions, add_special_tokens=False)):
            if len(enc.ids) > self.question_cap:
                questions[i] = questions[i][:enc.offsets[self.question_cap - 1][1]]
                truncated[i] = True
        ids, types, offsets, context, example = [], [], [], [], []
        for i, enc in enumerate(self.pairs.encode_batch(list(zip(questions, contexts)))):
            windows = [enc, *enc.overflowing]
            if self.max_windows is not None and len(windows) > self.max_windows:
                windows = windows[:self.max_windows]
                truncated[i] = True
            for w in windows:
                ids.append(w.ids)
                types.append(w.type_ids)
                ctx = np.fromiter((s == 1 for s in w.sequence_ids), dtype=bool, count=len(w.ids))
                off = np.asarray(w.offsets, dtype=np.int64).reshape(-1, 2)
                off[~ctx] = 0
                offsets.append(off)
                context.append(ctx)
                example.append(i)
        return QaWindows(ids, types, offsets, context, np.asarray(example, dtype=np.int64), truncated)


def answer_positions(windows: QaWindows, answers: Sequence[tuple[int, int] | None]) -> np.ndarray:
    """Training targets: (start token, end token) per window; (0, 0) ([CLS]) where the window
    does not hold the whole answer, or the question has none (``answers[i]``: character span or None)."""
    out = np.zeros((len(windows), 2), dtype=np.int64)
    for w in range(len(windows)):
        span = answers[windows.example[w]]
        if span is None:
            continue
        a_start, a_end = span
        ctx = np.flatnonzero(windows.context[w])
        if ctx.size == 0:
            continue
        off = windows.offsets[w]
        if not (off[ctx[0], 0] <= a_start and off[ctx[-1], 1] >= a_end):
            continue
        start = ctx[np.searchsorted(off[ctx, 0], a_start, side="right") - 1]  # last token starting at or before
        end = ctx[np.searchsorted(off[ctx, 1], a_end, side="left")]  # first token ending at or after
        out[w] = (start, end)
    return out


@dataclass(frozen=True)
class Spans:
    """The ``n_best`` spans of each window: token positions and logit sums (-inf where fewer exist)."""

    start: np.ndarray  # windows x n
    end: np.ndarray
    logit: np.ndarray


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, max_answer_length: int,
               n_best: int = 1) -> Spans:
    """Exact n-best spans of each window (rows of ``windows x tokens`` arrays; ``context``: allowed tokens)."""
    f, t = start_logits.shape
    length = max(1, min(max_answer_length, t))
    neg = np.float32(-np.inf)
    s = np.where(context, start_logits, neg).astype(np.float32)
    e = np.where(context, end_logits, neg).astype(np.float32)
    padded = np.concatenate([e, np.full((f, length - 1), neg, np.float32)], axis=1)
    ends = np.lib.stride_tricks.sliding_window_view(padded, length, axis=1)  # f x t x length: e[i + k]
    total = (s[:, :, None] + ends).reshape(f, t * length)
    n = min(n_best, t * length)
    if n == 1:
        top = total.argmax(axis=1)[:, None]
    else:
        part = np.argpartition(-total, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(total, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
    logit = np.take_along_axis(total, top, axis=1)
    return Spans(top // length, top // length + top % length, logit)


@dataclass(frozen=True)
class Answer:
    """A question's answer: character span into its context, or none (SQuAD 2.0)."""

    text: str | None
    start: int | None
    end: int | None
    score: float  # probability of the span within its window (of no answer, when there is none)
    null_margin: float  # [CLS] score minus the best span's score: above the threshold means "no answer"


def choose_answers(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], windows: QaWindows,
                   contexts: Sequence[str], max_answer_length: int, null_threshold: float | None = None,
                   n_questions: int | None = None) -> list[Answer]:
    """One answer per question from its windows' logits (``null_threshold`` None: always answer, SQuAD 1.1)."""
    n_questions = len(contexts) if n_questions is None else n_questions
    width = max((len(x) for x in start_logits), default=1)
    f = len(start_logits)
    s = np.full((f, width), -np.inf, np.float32)
    e = np.full((f, width), -np.inf, np.float32)
    allowed = np.zeros((f, width), dtype=bool)
    for w in range(f):
        k = len(start_logits[w])
        s[w, :k], e[w, :k] = start_logits[w], end_logits[w]
        allowed[w, :k] = windows.context[w]
    best = np.full(f, -np.inf, np.float32)
    span = np.zeros((f, 2), dtype=np.int64)
    for lo in range(0, f, _CHUNK):  # bounded memory: windows x tokens x max_answer_length per chunk
        part = best_spans(s[lo:lo + _CHUNK], e[lo:lo + _CHUNK], allowed[lo:lo + _CHUNK], max_answer_length, 1)
        best[lo:lo + _CHUNK] = part.logit[:, 0]
        span[lo:lo + _CHUNK, 0], span[lo:lo + _CHUNK, 1] = part.start[:, 0], part.end[:, 0]
    null = s[:, 0] + e[:, 0]  # [CLS]
    answers: list[Answer] = []
    order = np.argsort(windows.example, kind="stable")
    bounds = np.searchsorted(windows.example[order], np.arange(n_questions + 1))
    for q in range(n_questions):
        mine = order[bounds[q]:bounds[q + 1]]
        if mine.size == 0:
            answers.append(Answer(None, None, None, 0.0, float("inf")))
            continue
        w = mine[np.argmax(best[mine])]
        null_w = mine[np.argmin(null[mine])]
        margin = float(null[null_w] - best[w])
        if not np.isfinite(best[w]) or (null_threshold is not None and margin > null_threshold):
            answers.append(Answer(None, None, None, _prob(s[null_w], e[null_w], allowed[null_w], 0, 0), margin))
            continue
        i, j = int(span[w, 0]), int(span[w, 1])
        off = windows.offsets[w]
        a, b = int(off[i, 0]), int(off[j, 1])
        answers.append(Answer(contexts[q][a:b], a, b, _prob(s[w], e[w], allowed[w], i, j), margin))
    return answers


def _prob(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, i: int, j: int) -> float:
    """P(start = i) * P(end = j), each a softmax over the window's context tokens and [CLS]."""
    keep = allowed.copy()
    keep[0] = True

    def softmax_at(x: np.ndarray, k: int) -> float:
        v = x[keep].astype(np.float64)
        m = v.max()
        return float(np.exp(x[k] - m) / np.exp(v - m).sum())

    return softmax_at(start, i) * softmax_at(end, j)
