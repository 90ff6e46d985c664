"""Training and validation examples for a config: read, split, label-mapped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.examples import Examples, TaggedExamples, TextExamples
from bertflow.bert_core.finetune.labels import encode_labels, encode_tags, infer_label_names
from bertflow.bert_core.finetune.readers import read_examples
from bertflow.bert_core.finetune.split import split_indices


@dataclass
class LabelledData:
    train: Examples
    valid: Examples
    label_names: list[str]
    train_ids: np.ndarray | list[np.ndarray]  # label ids (token task: one array per sentence)
    valid_ids: np.ndarray | list[np.ndarray]
    valid_source: str  # "file" or "split"


def load_data(cfg: FinetuneConfig) -> LabelledData:
    """Read the training file, the validation file or a seeded split, and the label map.

    The label map comes from the whole training file (before any split), so a rare
    label that lands only in the split-off validation part is still known.
    """
    def read(path: str, role: str) -> Examples:
        return read_examples(
            path, cfg.task, cfg.text_column, cfg.label_column, cfg.text_pair_column, cfg.conll_tag_field, role
        )

    full = read(cfg.train_path, "training")
    label_names = infer_label_names(_all_labels(full))
    if len(label_names) < 2:
        raise InputError(
            f"training file {cfg.train_path}: column {cfg.label_column!r} holds a single label {label_names!r}; "
            "classification needs at least two"
        )
    if cfg.valid_path:
        train, valid, source = full, read(cfg.valid_path, "validation"), "file"
    else:
        strata = full.labels if isinstance(full, TextExamples) else None
        tr, va = split_indices(len(full), cfg.valid_fraction, cfg.seed, strata)
        train, valid, source = full.subset(tr), full.subset(va), "split"
    train_where = f"training file {cfg.train_path}"
    valid_where = f"validation file {cfg.valid_path}" if cfg.valid_path else f"validation split of {cfg.train_path}"
    train_ids = _encode(train, label_names, train_where)
    valid_ids = _encode(valid, label_names, valid_where)
    return LabelledData(train, valid, label_names, train_ids, valid_ids, source)


def _all_labels(examples: Examples) -> list[str]:
    if isinstance(examples, TaggedExamples):
        return [t for sentence in examples.tags for t in sentence]
    return list(examples.labels)


def _encode(examples: Examples, names: list[str], where: str):
    if isinstance(examples, TaggedExamples):
        return encode_tags(examples.tags, names, where)
    return encode_labels(examples.labels, names, where)
