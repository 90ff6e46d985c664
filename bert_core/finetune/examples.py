"""In-memory labelled examples: sentences (or pairs) with a label, or word sequences with tags.

Labels stay strings here; integer ids appear only once a label map exists
(:mod:`bert_core.finetune.labels`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TextExamples:
    """Sequence classification: one label per text (or text pair)."""

    texts: list[str]
    labels: list[str]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextExamples:
        pairs = [self.pairs[i] for i in indices] if self.pairs is not None else None
        return TextExamples([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)

    def records(self) -> list[list]:
        if self.pairs is None:
            return [[t, y] for t, y in zip(self.texts, self.labels)]
        return [[t, p, y] for t, p, y in zip(self.texts, self.pairs, self.labels)]

    def digest(self) -> str:
        return _records_digest(self.records())


@dataclass(frozen=True)
class TaggedExamples:
    """Token classification: one tag per word."""

    words: list[list[str]]
    tags: list[list[str]]

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, indices: Sequence[int]) -> TaggedExamples:
        return TaggedExamples([self.words[i] for i in indices], [self.tags[i] for i in indices])

    def records(self) -> list[list]:
        return [[w, t] for w, t in zip(self.words, self.tags)]

    def digest(self) -> str:
        return _records_digest(self.records())


@dataclass(frozen=True)
class QaExamples:
    """Extractive question answering: a question about a context and its answer spans (none: unanswerable)."""

    ids: list[str]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]]  # (text, character start) per reference answer; [] = unanswerable
    groups: list[str]  # what the validation split keeps together: the article title, else the context

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, indices: Sequence[int]) -> QaExamples:
        return QaExamples(*([getattr(self, f)[i] for i in indices] for f in
                            ("ids", "questions", "contexts", "answers", "groups")))

    @property
    def has_unanswerable(self) -> bool:
        return any(not a for a in self.answers)

    def records(self) -> list[list]:
        return [[i, q, c, [list(a) for a in ans]] for i, q, c, ans in
                zip(self.ids, self.questions, self.contexts, self.answers)]

    def digest(self) -> str:
        return _records_digest(self.records())


Examples = TextExamples | TaggedExamples | QaExamples


def _records_digest(records: list[list]) -> str:
    """sha256 of the multiset of examples: independent of row order, sensitive to any text or label."""
    row_hashes = sorted(
        hashlib.sha256(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest() for r in records
    )
    h = hashlib.sha256()
    for rh in row_hashes:
        h.update(rh.encode())
    return h.hexdigest()
