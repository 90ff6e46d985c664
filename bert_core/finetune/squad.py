"""Read extractive-QA data: SQuAD JSON (v1.1, v2.0), or JSONL / Parquet rows, into :class:`QaExamples`.

* ``.json`` (``.json.gz``): the SQuAD layout ``{"data": [{"title", "paragraphs": [{"context",
  "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``.
  v2.0 unanswerable questions have ``is_impossible: true`` and no answers (their
  ``plausible_answers`` are not answers).
* ``.jsonl`` (``.jsonl.gz``) and ``.parquet``: one row per question with ``question``,
  ``context`` and ``answers`` columns (names from ``finetune.question_column`` etc.), as
  Hugging Face ``datasets`` stores SQuAD: ``answers = {"text": [...], "answer_start": [...]}``
  (a list of ``{"text", "answer_start"}`` objects works too; empty lists: unanswerable);
  optional ``id`` and ``title`` columns.

Each answer must be the context's text at its ``answer_start``: a mismatch is an
InputError naming the question, never a silently wrong training target.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.examples import QaExamples


def read_qa(path: str | Path, question_column: str = "question", context_column: str = "context",
            answers_column: str = "answers", role: str = "training") -> QaExamples:
    """Read a QA file (format from the extension); ``role`` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{role} file {p} not found (check finetune.train_path / finetune.valid_path)")
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    where = f"{role} file {p}"
    if ext == ".json":
        rows = _squad_rows(_load_json(p, where), where)
    elif ext == ".jsonl":
        rows = _jsonl_rows(p, where)
    elif ext in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing error
            raise InputError(f"{where} cannot be read as Parquet: {exc}") from None
    else:
        raise InputError(f"{where}: question answering reads SQuAD .json, .jsonl or .parquet files (got {ext!r})")
    if not rows:
        raise InputError(f"{where} holds no questions")
    return _examples(rows, question_column, context_column, answers_column, where)


def _load_json(p: Path, where: str) -> Any:
    opener = gzip.open if p.suffix.lower() == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8-sig") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise InputError(f"{where} is not a readable JSON file: {exc}") from None


def _squad_rows(doc: Any, where: str) -> list[dict]:
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise InputError(f'{where} is not SQuAD JSON: expected {{"data": [articles]}} at the top '
                         "(one question per line? name the file .jsonl)")
    rows = []
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", f"article-{a}"))
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            for q, qa in enumerate(para.get("qas", [])):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "title": title, "question": qa.get("question"),
                             "context": context, "answers": answers})
    return rows


def _jsonl_rows(p: Path, where: str) -> list[dict]:
    opener = gzip.open if p.suffix.lower() == ".gz" else open
    rows = []
    try:
        with opener(p, "rt", encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{where}:{lineno}: not a JSON object ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return rows


def _examples(rows: list[dict], qcol: str, ccol: str, acol: str, where: str) -> QaExamples:
    for col in (qcol, ccol, acol):
        if col not in rows[0]:
            raise InputError(f"{where} has no field {col!r}; it has {', '.join(map(repr, rows[0]))} "
                             "(set finetune.question_column / context_column / answers_column)")
    ids, questions, contexts, answers, groups = [], [], [], [], []
    for r, row in enumerate(rows):
        qid = str(row.get("id", r))
        question, context = row.get(qcol), row.get(ccol)
        for what, value in (("question", question), ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: question {qid!r} has no {what} (row {r}); every row needs one")
        spans = _answers(row.get(acol), qid, where)
        for text, start in spans:
            if context[start:start + len(text)] != text:
                raise InputError(f"{where}: question {qid!r}: answer {text!r} is not the context's text at "
                                 f"answer_start {start} (there: {context[start:start + len(text)]!r})")
        ids.append(qid)
        questions.append(question)
        contexts.append(context)
        answers.append(spans)
        groups.append(str(row["title"]) if row.get("title") is not None else context)
    return QaExamples(ids, questions, contexts, answers, groups)


def _answers(value: Any, qid: str, where: str) -> list[tuple[str, int]]:
    """``{"text": [...], "answer_start": [...]}`` or ``[{"text", "answer_start"}, ...]`` -> [(text, start)]."""
    if value is None:
        return []
    if isinstance(value, dict):
        texts, starts = value.get("text") or [], value.get("answer_start") or []
        if len(texts) != len(starts):
            raise InputError(f"{where}: question {qid!r}: {len(texts)} answer texts but {len(starts)} answer_start")
        pairs = list(zip(texts, starts))
    elif isinstance(value, list):
        try:
            pairs = [(a["text"], a["answer_start"]) for a in value]
        except (TypeError, KeyError):
            raise InputError(f"{where}: question {qid!r}: each answer needs text and answer_start") from None
    else:
        raise InputError(f"{where}: question {qid!r}: answers must be a list or {{text, answer_start}}")
    out = []
    for text, start in pairs:
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise InputError(f"{where}: question {qid!r}: answer ({text!r}, {start!r}) is not (text, start offset)")
        out.append((text, start))
    return out
