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
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

HF_ARTIFACT = "hf_model"
META_FILE = "bertflow_finetune.json"  # written by bertflow's export beside config.json: task and max length
BATCH_SIZE = 32


class FineTunedModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned sequence or token classifier, loaded once per process from the model's ``hf_model``."""

    def load_context(self, context) -> None:
        model_dir = Path(context.artifacts[HF_ARTIFACT])
        meta = _meta(model_dir)
        self.task = meta["task"]
        self.max_length = int(meta.get("max_length", 512))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        auto = AutoModelForTokenClassification if self.task == "token" else AutoModelForSequenceClassification
        # safetensors only and no code from the directory: loading a model must not run anything
        self.model = auto.from_pretrained(str(model_dir), use_safetensors=True, trust_remote_code=False)
        self.model.to(self.device).eval()
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.sigmoid = config.num_labels == 1 or getattr(config, "problem_type", None) == "multi_label_classification"

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = _frame(model_input)
        texts = ["" if t is None else str(t) for t in frame["text"]]
        if self.task == "token":
            return pd.DataFrame({"entities": self._entities(texts)})
        pairs = None
        if "text_pair" in frame.columns:
            pairs = ["" if t is None else str(t) for t in frame["text_pair"]]
        probs = self._sequence_probs(texts, pairs)
        best = probs.argmax(axis=1)
        return pd.DataFrame({
            "label": [self.labels[i] for i in best],
            "score": [float(p[i]) for p, i in zip(probs, best)],
            "probabilities": [[float(x) for x in p] for p in probs],
        })

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


def _frame(model_input) -> pd.DataFrame:
    """A DataFrame with a ``text`` column, from a DataFrame, a list of strings or a dict of columns."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input)
    else:
        frame = pd.DataFrame({"text": list(model_input)})
    if "text" not in frame.columns:
        raise ValueError(f"the input needs a 'text' column (got columns {list(frame.columns)})")
    return frame


def _meta(model_dir: Path) -> dict:
    """The task and max length bertflow's export wrote; for other directories, what config.json says."""
    path = model_dir / META_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    token = any(a.endswith("ForTokenClassification") for a in config.get("architectures") or [])
    return {"task": "token" if token else "sequence",
            "max_length": min(512, int(config.get("max_position_embeddings", 512)))}


mlflow.models.set_model(FineTunedModel())
