"""Sequence classification: one label per row (or row pair), its probability, optional probabilities and embedding.

Texts longer than ``max_length`` tokens are truncated (flagged ``truncated``, still scored).
Probabilities are a softmax, or a sigmoid for one-label and multi-label models, as
transformers' text-classification pipeline does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.config import batch_token_cap
from bertflow.bert_core.score.encode import ERR_EMPTY_PAIR, ERR_NULL_PAIR, EncodedWindow, encode_window, extract_texts
from bertflow.bert_core.score.heads import Head


class SequenceHead(Head):
    name = "sequence"

    def check(self) -> None:
        if self.cfg.tokens or self.cfg.aggregation != "simple":
            raise InputError("score.tokens and score.aggregation are for token models; this is a sequence "
                             "classifier (set score.head if it was detected wrongly)")

    def fields(self) -> list[pa.Field]:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if self.cfg.probabilities:
            fields.append(pa.field("probabilities", pa.list_(pa.float32())))
        if self.cfg.embeddings != "none":
            fields.append(pa.field("embedding", pa.list_(pa.float32(), self.clf.hidden_size)))
        return fields

    def encode(self, batch: pa.RecordBatch, inputs: tuple[str, ...], pin: bool) -> EncodedWindow:
        clf, cfg = self.clf, self.cfg
        texts = extract_texts(batch.column(inputs[0]), clf.max_chars, cfg.non_string_text)
        pairs = None
        if len(inputs) > 1:
            pairs = extract_texts(batch.column(inputs[1]), clf.max_chars, cfg.non_string_text,
                                  null_code=ERR_NULL_PAIR, empty_code=ERR_EMPTY_PAIR)
        return encode_window(texts, pairs, clf.tokenizer, cfg.batch_size, clf.pad_id, clf.pad_multiple,
                             clf.uses_token_types, sort=cfg.sort_window > 1, pin=pin,
                             max_tokens=batch_token_cap(cfg, clf.device.type))

    def needs_hidden_states(self) -> bool:
        return self.cfg.embeddings != "none"

    def outputs(self, out: Any, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = out.logits.float()
        probs = torch.sigmoid(logits) if self.clf.activation == "sigmoid" else torch.softmax(logits, dim=-1)
        pooling = self.cfg.embeddings
        if pooling == "none":
            return (probs,)
        hidden = out.hidden_states[-1]
        if pooling == "cls":
            return probs, hidden[:, 0].float()
        m = mask.unsqueeze(-1).to(torch.float32)
        return probs, (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)

    def columns(self, enc: EncodedWindow, results: list[tuple[Any, tuple]]) -> list[pa.Array]:
        n, k = enc.n, len(self.clf.labels)
        dim = self.clf.hidden_size if self.cfg.embeddings != "none" else 0
        probs = np.zeros((n, k), dtype=np.float32)
        emb = np.zeros((n, dim), dtype=np.float32) if dim else None
        for rows, arrays in results:
            probs[rows] = arrays[0]
            if emb is not None:
                emb[rows] = arrays[1]
        label_idx = np.where(enc.scored, probs.argmax(axis=1), -1).astype(np.int32) if n else np.zeros(0, np.int32)
        missing = label_idx < 0
        labels = pa.DictionaryArray.from_arrays(pa.array(label_idx, mask=missing),
                                                pa.array(list(self.clf.labels), pa.string())).cast(pa.string())
        score = probs[np.arange(n), np.maximum(label_idx, 0)].astype(np.float32) if n else np.zeros(0, np.float32)
        cols = [labels, pa.array(score, pa.float32(), mask=missing)]
        if self.cfg.probabilities:
            offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
            cols.append(pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)), mask=pa.array(missing)))
        if emb is not None:
            # Unscored rows get a NaN vector, not null: pyarrow < 26 cannot read null fixed_size_list
            # entries back from Parquet (apache/arrow#35692). Their ``error`` says why.
            emb[missing] = np.nan
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim))
        return cols
