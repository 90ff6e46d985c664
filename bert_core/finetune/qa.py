"""Extractive question answering for fine-tuning: data and split, windows with targets, evaluation, predictions.

The validation split keeps whole articles (or contexts) on one side. Training windows
get the first reference answer's token span, or [CLS] where the window does not hold
the whole answer (or there is none). Evaluation decodes every validation question with
the same code scoring uses (:mod:`bert_core.heads.qa`) and scores it with the official
SQuAD rules (:mod:`bert_core.finetune.qa_metrics`); on SQuAD 2.0 data it also picks the
no-answer threshold that maximises F1 on validation, saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.encode import Encoded, require_fast
from bertflow.bert_core.finetune.evaluate import Evaluation
from bertflow.bert_core.finetune.examples import QaExamples
from bertflow.bert_core.finetune.infer import SpanOutputs
from bertflow.bert_core.finetune.qa_metrics import best_threshold, qa_report, question_scores
from bertflow.bert_core.finetune.split import split_groups
from bertflow.bert_core.finetune.squad import read_qa
from bertflow.bert_core.heads.qa import Answer, QaWindowing, QaWindows, answer_positions, choose_answers


@dataclass
class QaData:
    train: QaExamples
    valid: QaExamples
    valid_source: str  # "file" or "split"
    version: str  # "2.0" when any question is unanswerable, else "1.1": which official rules score it


def load_qa_data(cfg: FinetuneConfig) -> QaData:
    """The training file, and the validation file or a seeded split by article (or context)."""
    def read(path: str, role: str) -> QaExamples:
        return read_qa(path, cfg.question_column, cfg.context_column, cfg.answers_column, role)

    full = read(cfg.train_path, "training")
    if cfg.valid_path:
        train, valid, source = full, read(cfg.valid_path, "validation"), "file"
    else:
        tr, va = split_groups(full.groups, cfg.valid_fraction, cfg.seed)
        train, valid, source = full.subset(tr), full.subset(va), "split"
    version = "2.0" if train.has_unanswerable or valid.has_unanswerable else "1.1"
    return QaData(train, valid, source, version)


def windowing(tokenizer, cfg: FinetuneConfig, max_length: int) -> QaWindowing:
    require_fast(tokenizer, "question answering")
    try:
        return QaWindowing(tokenizer.backend_tokenizer, max_length, cfg.doc_stride)
    except ValueError as exc:
        raise ConfigError(f"finetune.doc_stride: {exc}") from None


def encode_qa(win: QaWindowing, tokenizer, examples: QaExamples, targets: bool) -> tuple[Encoded, QaWindows]:
    """Windows of every question as model inputs; with ``targets``, each window's answer token span."""
    windows = win.encode(examples.questions, examples.contexts)
    positions = None
    if targets:
        spans = [(a[0][1], a[0][1] + len(a[0][0])) if a else None for a in examples.answers]
        positions = answer_positions(windows, spans)
    types = windows.type_ids if "token_type_ids" in getattr(tokenizer, "model_input_names", []) else None
    return Encoded(windows.input_ids, types, None, positions=positions), windows


@dataclass
class QaOutputs:
    answers: list[Answer]  # decoded spans (before the no-answer threshold)
    predictions: list[str]  # final answers ("" for none)
    null_threshold: float | None  # chosen on validation (SQuAD 2.0), else None


def evaluate_qa(outputs: SpanOutputs, windows: QaWindows, examples: QaExamples, max_answer_length: int,
                version: str) -> Evaluation:
    """SQuAD figures of the validation questions (``eval_metric``: F1); v2.0 picks the no-answer threshold."""
    answers = choose_answers(outputs.start, outputs.end, windows, examples.contexts, max_answer_length)
    spans = [a.text or "" for a in answers]
    golds = [[text for text, _ in refs] for refs in examples.answers]
    threshold = None
    final = spans
    metrics: dict[str, float] = {}
    if version == "2.0":
        margins = np.array([a.null_margin for a in answers], dtype=np.float64)
        has = np.array([bool(refs) for refs in golds])
        _, f1 = question_scores(golds, spans, "2.0")
        _, threshold = best_threshold(f1, spans, margins, has)
        # The sweep's threshold is one question's own margin; halfway to the next one is the same choice on
        # validation and does not flip that question on float noise when it is scored again elsewhere.
        above = margins[margins > threshold]
        threshold = float((threshold + above.min()) / 2) if above.size else threshold + 1.0
        final = ["" if m > threshold else p for p, m in zip(spans, margins)]
        metrics["null_threshold"] = threshold
    report = qa_report(golds, final, version)
    metrics = {**report, **metrics, "eval_metric": report["f1"]}
    return Evaluation(metrics, {}, None, QaOutputs(answers, final, threshold))


def predictions_table(examples: QaExamples, outputs: QaOutputs, version: str):
    """One row per validation question: inputs, references, our answer and its per-question figures."""
    import pyarrow as pa

    golds = [[text for text, _ in refs] for refs in examples.answers]
    exact, f1 = question_scores(golds, outputs.predictions, version)
    spans = [(a.start, a.end) if p else (None, None) for a, p in zip(outputs.answers, outputs.predictions)]
    return pa.table({
        "id": pa.array(examples.ids, pa.string()),
        "group": pa.array(examples.groups, pa.string()),
        "question": pa.array(examples.questions, pa.string()),
        "context": pa.array(examples.contexts, pa.string()),
        "answers": pa.array(golds, pa.list_(pa.string())),
        "pred": pa.array(outputs.predictions, pa.string()),
        "pred_start": pa.array([s for s, _ in spans], pa.int32()),
        "pred_end": pa.array([e for _, e in spans], pa.int32()),
        "score": pa.array([a.score for a in outputs.answers], pa.float32()),
        "null_margin": pa.array([a.null_margin for a in outputs.answers], pa.float32()),
        "exact": pa.array(exact, pa.float32()),
        "f1": pa.array(f1, pa.float32()),
    })
