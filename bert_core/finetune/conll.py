"""CoNLL reader: one ``word ... tag`` line per token, blank lines between sentences.

The CoNLL-2003 layout is ``word POS chunk NER``; ``-DOCSTART-`` lines mark document
boundaries and are not sentences.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.examples import TaggedExamples

DOCSTART = "-DOCSTART-"


def parse_conll(lines: Iterable[str], source: str = "<conll>", tag_field: int = -1) -> TaggedExamples:
    """Parse CoNLL lines into sentences of words and tags.

    Args:
        lines: text lines (line endings are stripped).
        source: file name used in error messages.
        tag_field: which whitespace-separated field holds the tag (-1: the last).
    """
    words: list[list[str]] = []
    tags: list[list[str]] = []
    cur_w: list[str] = []
    cur_t: list[str] = []

    def flush() -> None:
        if cur_w:
            words.append(list(cur_w))
            tags.append(list(cur_t))
            cur_w.clear()
            cur_t.clear()

    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == DOCSTART:
            flush()
            continue
        if len(fields) < 2:
            raise InputError(
                f"{source}:{lineno}: expected 'word ... tag' (whitespace-separated), got {line.strip()!r}; "
                "CoNLL files need one token and its tag per line and blank lines between sentences"
            )
        try:
            tag = fields[tag_field]
        except IndexError:
            raise InputError(
                f"{source}:{lineno}: no field {tag_field} in {line.strip()!r} (finetune.conll_tag_field)"
            ) from None
        cur_w.append(fields[0])
        cur_t.append(tag)
    flush()
    return TaggedExamples(words, tags)


def read_conll(path: str | Path, tag_field: int = -1) -> TaggedExamples:
    """Read a CoNLL file (UTF-8, optional BOM, any line endings; ``.gz`` is decompressed)."""
    path = Path(path)
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline=None) as fh:
            return parse_conll(fh, str(path), tag_field)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
