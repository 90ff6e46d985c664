"""Load an exported fine-tuned directory and predict labels for texts (tags for words, answers for questions).

This is what tests, the export check and the MLflow pyfunc wrapper use; it goes through
``AutoTokenizer`` and the ``AutoModelFor*Classification`` classes only, so what it
predicts is what any Hugging Face user of the directory gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.encode import encode_texts, encode_words
from bertflow.bert_core.finetune.export import read_meta
from bertflow.bert_core.finetune.infer import SequenceOutputs, SpanOutputs, TokenOutputs, infer, infer_spans
from bertflow.bert_core.finetune.model import autocast_dtype, check_model_dir, load_finetuned, load_tokenizer, resolve_device


@dataclass(frozen=True)
class Prediction:
    label: str  # token models: the word tags joined by spaces
    score: float  # probability of the label (token models: mean over words)
    tags: tuple[str, ...] | None = None  # token models: one tag per whitespace-separated word


class Predictor:
    """A loaded fine-tuned model; reuse it across calls to avoid reloading weights."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int | None = None,
        bf16: bool = False,
        allow_pickle_weights: bool = False,  # also load a pickle checkpoint (pytorch_model.bin): trusted files only
    ) -> None:
        self.model_dir = check_model_dir(model_dir, "fine-tuned model")
        meta = read_meta(self.model_dir)
        self.task: str = meta["task"]
        self.max_length = int(max_length or meta.get("max_length", 128))
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.amp_dtype = autocast_dtype(self.device, bf16)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_finetuned(self.model_dir, self.task, allow_pickle_weights).to(self.device).eval()
        id2label = self.model.config.id2label
        self.label_names = [str(id2label[i]) for i in range(self.model.config.num_labels)]
        self._missing_id = self.label_names.index("O") if "O" in self.label_names else 0
        self.meta = meta

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def sequence_outputs(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> SequenceOutputs:
        enc = encode_texts(self.tokenizer, texts, text_pairs, None, self.max_length)
        return infer(self.model, enc, self.batch_size, self.device, self.amp_dtype, self.pad_id)

    def token_outputs(self, words: Sequence[Sequence[str]]) -> TokenOutputs:
        enc = encode_words(self.tokenizer, words, None, self.max_length)
        return infer(self.model, enc, self.batch_size, self.device, self.amp_dtype, self.pad_id, self._missing_id)

    def predict_words(self, words: Sequence[Sequence[str]]) -> list[list[str]]:
        """Token models: one tag per given word."""
        out = self.token_outputs(words)
        return [[self.label_names[i] for i in p] for p in out.pred]

    def span_outputs(self, questions: Sequence[str], contexts: Sequence[str]):
        """QA models: the windows of each (question, context) pair and their start/end logits."""
        from bertflow.bert_core.heads.qa import QaWindowing

        win = QaWindowing(self.tokenizer.backend_tokenizer, self.max_length, int(self.meta.get("doc_stride", 128)))
        windows = win.encode(list(questions), list(contexts))
        types = windows.type_ids if "token_type_ids" in getattr(self.tokenizer, "model_input_names", []) else None
        from bertflow.bert_core.finetune.encode import Encoded

        enc = Encoded(windows.input_ids, types, None)
        out: SpanOutputs = infer_spans(self.model, enc, self.batch_size, self.device, self.amp_dtype, self.pad_id)
        return windows, out

    def answer(self, questions: Sequence[str], contexts: Sequence[str], null_threshold: float | None = None):
        """QA models: one :class:`~bertflow.bert_core.heads.qa.Answer` per question (text None: no answer).

        SQuAD 2.0 models use the threshold chosen at fine-tuning unless ``null_threshold`` is given.
        """
        from bertflow.bert_core.heads.qa import choose_answers

        if self.task != "qa":
            raise InputError(f"{self.model_dir} is a {self.task} model, not a question answering one")
        windows, out = self.span_outputs(questions, contexts)
        if null_threshold is None and self.meta.get("version_2_with_negative"):
            null_threshold = self.meta.get("null_threshold")
        return choose_answers(out.start, out.end, windows, list(contexts),
                              int(self.meta.get("max_answer_length", 30)), null_threshold, len(questions))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[Prediction]:
        """Sequence models: a label per text; token models: tags per whitespace-separated word."""
        if self.task == "qa":
            raise InputError(f"{self.model_dir} answers questions: call answer(questions, contexts)")
        texts = ["" if t is None else str(t) for t in texts]
        if self.task == "token":
            words = [t.split() for t in texts]
            out = self.token_outputs(words)
            preds = []
            for p, s in zip(out.pred, out.score):
                tags = tuple(self.label_names[i] for i in p)
                preds.append(Prediction(" ".join(tags), float(np.mean(s)) if len(s) else 1.0, tags))
            return preds
        out = self.sequence_outputs(texts, text_pairs)
        return [Prediction(self.label_names[i], float(s)) for i, s in zip(out.pred, out.score)]


def predict(model_dir: str | Path, texts: Sequence[str], text_pairs: Sequence[str] | None = None, device: str = "auto",
            batch_size: int = 64) -> list[Prediction]:
    """One-shot convenience: load ``model_dir`` and predict ``texts``."""
    return Predictor(model_dir, device=device, batch_size=batch_size).predict(texts, text_pairs)
