"""The MLflow model bertflow registers: a fine-tuned Hugging Face directory behind MLflow's pyfunc API.

MLflow logs this file *as code* ("models from code") inside every registered model, beside the
Hugging Face directory (artifact ``hf_model``). It imports MLflow, torch, transformers, numpy and
pandas only, never bertflow, and nothing is unpickled: ``mlflow.pyfunc.load_model("models:/<name>@champion")``
and ``mlflow models serve`` work wherever those packages are installed.

* Sequence models: a DataFrame with ``text`` (and ``text_pair`` for pair models) -> ``label``,
  ``score`` (the label's probability) and ``probabilities`` (one per label, in label-id order), as
  ``bertflow score`` computes them (softmax; sigmoid for one-label or multi-label models).
* Token models: ``text`` -> ``entities``, per row a list of ``{label, start, end, text, score}`` with
  character offsets into the text. Words are the tokenizer's words (BERT: split at whitespace and
  punctuation, as CoNLL tokens are); a word's tag is read at its first piece (the piece fine-tuning
  trained), and B-/I- tags are grouped into spans as transformers' token-classification pipeline
  groups them with ``aggregation_strategy="first"``; a span's score is the mean of its words' scores.
  Words cut off by ``max_length`` get no tag.
* Question-answering models: ``question`` and ``context`` -> ``answer`` (the span's text),
  ``answer_start``/``answer_end`` (character offsets into the context), ``score`` and ``error``,
  as ``bertflow score``'s qa head decodes them (duplicated below, bertflow is not imported): the
  context in windows of the model's ``max_length`` overlapping by its ``doc_stride`` tokens, the
  question cut at 64 tokens or half a window (``error`` "truncated"); the best
  ``start_logit + end_logit`` over every (start, end) pair of context tokens at most
  ``max_answer_length`` apart in any window wins, its ``score`` the span's probability within its
  window. ``bertflow score`` given the model's ``max_length`` and ``doc_stride`` as ``score.max_length``
  and ``score.stride`` gives the same answers. SQuAD 2.0 models answer null (the score then
  is the no-answer probability) when the lowest [CLS] score beats the best span's by more than the
  threshold chosen at fine-tuning. A null, empty or non-text question or context is that row's
  ``error`` (``null_question``, ``empty_context``, ...) with a null answer and score, never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

HF_ARTIFACT = "hf_model"
META_FILE = "bertflow_finetune.json"  # written by bertflow's export beside config.json: task and max length
BATCH_SIZE = 32
AUTO = {"token": AutoModelForTokenClassification, "qa": AutoModelForQuestionAnswering}  # else sequence
MAX_QUESTION_TOKENS = 64  # questions are cut here (or at half the window), as bertflow's fine-tuning and scoring
QA_DEFAULTS = {"doc_stride": 128, "max_answer_length": 30}  # fine-tuning's defaults, for directories without them


class FineTunedModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned sequence or token classifier or QA model, loaded once per process from its ``hf_model``."""

    def load_context(self, context) -> None:
        model_dir = Path(context.artifacts[HF_ARTIFACT])
        meta = _meta(model_dir)
        self.task = meta["task"]
        self.max_length = int(meta.get("max_length", 512))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        auto = AUTO.get(self.task, AutoModelForSequenceClassification)
        # safetensors only and no code from the directory: loading a model must not run anything
        self.model = auto.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=False)
        self.model.to(self.device).eval()
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.sigmoid = config.num_labels == 1 or getattr(config, "problem_type", None) == "multi_label_classification"
        if self.task == "qa":
            self.qa = QaSettings.of(meta, self.tokenizer, self.max_length, model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.task == "qa":
            return self._answers(_frame(model_input, ("question", "context")))
        frame = _frame(model_input)
        texts, errors = _column(frame["text"], "text")
        if "text_pair" in frame.columns:
            pairs, pair_errors = _column(frame["text_pair"], "text_pair")
            errors = [e or p for e, p in zip(errors, pair_errors)]  # the text's error first, as bertflow score does
        else:
            pairs = None
        good = [i for i, e in enumerate(errors) if e is None]  # a null or blank row gets no prediction, its reason
        n = len(texts)
        if self.task == "token":
            entities: list = [None] * n
            for i, spans in zip(good, self._entities([texts[i] for i in good])):
                entities[i] = spans
            return _output({"entities": entities, "error": errors})
        label, score, probabilities = [None] * n, [None] * n, [None] * n
        if good:
            probs = self._sequence_probs([texts[i] for i in good], [pairs[i] for i in good] if pairs else None)
            for i, p in zip(good, probs):
                k = int(p.argmax())
                label[i], score[i], probabilities[i] = self.labels[k], float(p[k]), [float(x) for x in p]
        return _output({"label": label, "score": score, "probabilities": probabilities, "error": errors})

    @torch.inference_mode()
    def _sequence_probs(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for idx in _batches(texts):
            enc = self.tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs is not None else None,
                                 truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            logits = self.model(**enc.to(self.device)).logits.float()
            p = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
            probs[idx] = p.cpu().numpy()
        return probs

    @torch.inference_mode()
    def _entities(self, texts: list[str]) -> list[list[dict]]:
        out: list[list[dict]] = [[] for _ in texts]
        for idx in _batches(texts):
            enc = self.tokenizer([texts[i] for i in idx], truncation=True, max_length=self.max_length, padding=True,
                                 return_offsets_mapping=True, return_tensors="pt")
            offsets = enc.pop("offset_mapping").tolist()
            logits = self.model(**enc.to(self.device)).logits.float()
            score, pred = torch.softmax(logits, dim=-1).max(dim=-1)
            score, pred = score.cpu().numpy(), pred.cpu().numpy()
            for row, i in enumerate(idx):
                words: dict[int, list] = {}  # word id -> [start, end, tag, score], tagged at its first piece
                for pos, w in enumerate(enc.word_ids(row)):
                    if w is None:
                        continue
                    if w in words:
                        words[w][1] = offsets[row][pos][1]
                    else:
                        words[w] = [*offsets[row][pos], self.labels[pred[row, pos]], float(score[row, pos])]
                out[i] = _spans(texts[i], [((a, b), tag, s) for a, b, tag, s in words.values()])
        return out

    def _answers(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One answer per row; rows in chunks of ``BATCH_SIZE`` (their windows go through the model together)."""
        n = len(frame)
        cols = {"answer": [None] * n, "answer_start": [None] * n, "answer_end": [None] * n, "score": [None] * n,
                "error": [None] * n}
        good: list[tuple[int, str, str]] = []
        for i, (q, c) in enumerate(zip(frame["question"], frame["context"])):
            q, q_err = _text(q, "question")
            c, c_err = _text(c, "context")
            cols["error"][i] = q_err or c_err  # the question's error first, as bertflow score reports it
            if q_err is None and c_err is None:
                good.append((i, q, c))
        for k in range(0, len(good), BATCH_SIZE):
            chunk = good[k:k + BATCH_SIZE]
            for (i, _, _), (answer, cut) in zip(chunk, self._answer_chunk([q for _, q, _ in chunk],
                                                                          [c for _, _, c in chunk])):
                cols["answer"][i], cols["answer_start"][i], cols["answer_end"][i], cols["score"][i] = answer
                if cut:
                    cols["error"][i] = "truncated"
        return _output(cols)

    @torch.inference_mode()
    def _answer_chunk(self, questions: list[str], contexts: list[str]) -> list[tuple[tuple, bool]]:
        """``((answer, start, end, score), question_cut)`` per pair, from the logits of all its windows."""
        qa = self.qa
        cut = [False] * len(questions)
        measured = self.tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for i, offsets in enumerate(measured):
            if len(offsets) > qa.question_cap:
                questions[i], cut[i] = questions[i][:offsets[qa.question_cap - 1][1]], True
        enc = self.tokenizer(questions, contexts, truncation="only_second", max_length=self.max_length,
                             stride=qa.stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                             padding=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping").numpy()
        owner = enc.pop("overflow_to_sample_mapping").tolist()
        starts, ends = [], []
        for lo in range(0, len(owner), BATCH_SIZE):
            out = self.model(**{k: v[lo:lo + BATCH_SIZE].to(self.device) for k, v in enc.items()})
            starts.append(out.start_logits.float().cpu().numpy())
            ends.append(out.end_logits.float().cpu().numpy())
        start, end = np.concatenate(starts), np.concatenate(ends)
        context = np.array([[s == 1 for s in enc.sequence_ids(w)] for w in range(len(owner))], dtype=bool)
        mine: list[list[int]] = [[] for _ in questions]
        for w, i in enumerate(owner):
            mine[i].append(w)
        return [(_answer(contexts[i], [(start[w], end[w], context[w], offsets[w]) for w in ws],
                         qa.max_answer_length, qa.null_threshold), cut[i]) for i, ws in enumerate(mine)]


class QaSettings:
    """How a QA model cuts contexts and decodes answers: from bertflow's marker, else fine-tuning's defaults."""

    def __init__(self, question_cap: int, stride: int, max_answer_length: int, null_threshold: float | None):
        self.question_cap, self.stride = question_cap, stride
        self.max_answer_length, self.null_threshold = max_answer_length, null_threshold

    @classmethod
    def of(cls, meta: dict, tokenizer, max_length: int, model_dir: Path) -> QaSettings:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{model_dir}: question answering needs a fast tokenizer (tokenizer.json) for "
                             "character offsets")
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        cap = min(MAX_QUESTION_TOKENS, (max_length - specials) // 2)
        room = max_length - specials - cap
        stride = int(meta.get("doc_stride") or QA_DEFAULTS["doc_stride"])
        if stride >= room:  # only for directories bertflow did not fine-tune: its fine-tuning checked its stride
            stride = room // 2
        v2 = bool(meta.get("version_2_with_negative"))
        threshold = meta.get("null_threshold") if v2 else None
        return cls(cap, stride, int(meta.get("max_answer_length") or QA_DEFAULTS["max_answer_length"]),
                   None if threshold is None else float(threshold))


def _answer(context: str, windows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
            max_answer_length: int, null_threshold: float | None) -> tuple:
    """``(text, start, end, score)`` from a question's windows ``(start logits, end logits, context mask, offsets)``.

    The best span over the windows (the first window on a tie), its probability within its
    window; no answer (text and offsets None, the no-answer probability as score) when no
    window holds a context token, or the lowest [CLS] score beats the span by more than the threshold.
    """
    best, null = [], []
    for s, e, ctx, _ in windows:
        best.append(_best_span(s, e, ctx, max_answer_length))
        null.append(np.float32(s[0]) + np.float32(e[0]))
    w = int(np.argmax([b[0] for b in best]))
    nw = int(np.argmin(null))
    logit, i, j = best[w]
    margin = float(null[nw] - logit)
    if not np.isfinite(logit) or (null_threshold is not None and margin > null_threshold):
        s, e, ctx, _ = windows[nw]
        return None, None, None, _prob(s, e, ctx, 0, 0)
    s, e, ctx, off = windows[w]
    a, b = int(off[i, 0]), int(off[j, 1])
    return context[a:b], a, b, _prob(s, e, ctx, i, j)


def _best_span(start: np.ndarray, end: np.ndarray, ctx: np.ndarray, max_answer_length: int):
    """``(start_logit + end_logit, i, j)`` of the best span of context tokens ``i <= j < i + max_answer_length``."""
    neg = np.float32(-np.inf)
    s = np.where(ctx, start, neg).astype(np.float32)
    e = np.where(ctx, end, neg).astype(np.float32)
    pos = np.arange(len(s))
    gap = pos[None, :] - pos[:, None]  # j - i
    total = np.where((gap >= 0) & (gap < max_answer_length), s[:, None] + e[None, :], neg)
    k = int(total.argmax())  # the first best: lowest start, then lowest end
    i, j = divmod(k, len(s))
    return total[i, j], i, j


def _prob(start: np.ndarray, end: np.ndarray, ctx: np.ndarray, i: int, j: int) -> float:
    """P(start = i) * P(end = j), each a softmax over the window's context tokens and [CLS]."""
    keep = ctx.copy()
    keep[0] = True

    def softmax_at(x: np.ndarray, k: int) -> float:
        v = x[keep].astype(np.float64)
        m = v.max()
        return float(np.exp(x[k] - m) / np.exp(v - m).sum())

    return softmax_at(start, i) * softmax_at(end, j)


def _output(columns: dict[str, list]) -> pd.DataFrame:
    """Object columns: a missing value stays None (pandas 3 would make a string column's None a NaN)."""
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})


def _column(values, name: str) -> tuple[list[str | None], list[str | None]]:
    """Texts and error codes of a column (MLflow's signature check turns a null into NaN first)."""
    pairs = [_text(v, name) for v in values]
    return [t for t, _ in pairs], [e for _, e in pairs]


def _text(value, name: str) -> tuple[str | None, str | None]:
    """``(text, None)``, or ``(None, error)`` for a null, non-text or blank value (``null_question``, ...)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None, f"null_{name}"
    if not isinstance(value, str):
        return None, f"not_text:{type(value).__name__}"
    if not value.strip():
        return None, f"empty_{name}"
    return value, None


def _spans(text: str, tagged: list[tuple[tuple[int, int], str, float]]) -> list[dict]:
    """Group consecutive tagged words into spans: a B- tag or another type starts a new one; O spans are dropped."""
    groups: list[list[tuple[tuple[int, int], str, float]]] = []
    for word in tagged:
        bi, kind = _bio(word[1])
        if groups and bi != "B" and kind == _bio(groups[-1][-1][1])[1]:
            groups[-1].append(word)
        else:
            groups.append([word])
    spans = []
    for group in groups:
        label = group[0][1].split("-", 1)[-1]
        if label == "O":
            continue
        start, end = group[0][0][0], group[-1][0][1]
        spans.append({"label": label, "start": start, "end": end, "text": text[start:end],
                      "score": float(np.mean([s for _, _, s in group]))})
    return spans


def _bio(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ``("B", "PER")``; a tag without a B-/I- prefix continues a span of the same tag."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def _batches(texts: list[str]) -> list[list[int]]:
    """Row indices in batches of similar length (less padding), each batch in order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[k:k + BATCH_SIZE] for k in range(0, len(order), BATCH_SIZE)]


def _frame(model_input, columns: tuple[str, ...] = ("text",)) -> pd.DataFrame:
    """A DataFrame with ``columns``, from a DataFrame, a dict of columns, or a list (of strings: ``text``)."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input)
    elif columns == ("text",):
        frame = pd.DataFrame({"text": list(model_input)})
    else:
        frame = pd.DataFrame(list(model_input))  # records
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the input needs {' and '.join(repr(c) for c in columns)} columns "
                         f"(no {missing[0]!r}; got columns {list(frame.columns)})")
    return frame


def _meta(model_dir: Path) -> dict:
    """The task and max length bertflow's export wrote; for other directories, what config.json says."""
    path = model_dir / META_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    task = "sequence"
    if any(a.endswith("ForTokenClassification") for a in archs):
        task = "token"
    elif any(a.endswith("ForQuestionAnswering") for a in archs):
        task = "qa"
    return {"task": task, "max_length": min(512, int(config.get("max_position_embeddings", 512)))}


mlflow.models.set_model(FineTunedModel())
