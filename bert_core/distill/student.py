"""Build the student: a slice of the teacher's layers, another checkpoint with a fresh head, or a random shape.

DistilBERT initialised its student from one teacher layer out of two; TinyBERT maps student
layer m to teacher layer m*k. We keep teacher layers k, 2k, ..., L (1-based, k = L // n), so
the top layer, the one the classifier head was trained on, is always among them, and the same
map pairs hidden states for the optional hidden-state loss.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from bertflow.bert_core.errors import ConfigError, InputError


def every_kth_layer(teacher_layers: int, student_layers: int) -> list[int]:
    """0-based teacher layers k-1, 2k-1, ..., L-1 for an ``student_layers``-layer student (k = L // n)."""
    if student_layers > teacher_layers:
        raise ConfigError(f"distill.student_layers is {student_layers} but the teacher has only {teacher_layers} "
                          "layers: a student must not be deeper than its teacher")
    k = teacher_layers // student_layers
    top = teacher_layers - 1
    return [top - k * (student_layers - 1 - m) for m in range(student_layers)]


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a Hugging Face BERT-family model (``<base>.encoder.layer``)."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(f"{type(model).__name__} has no encoder.layer list: only BERT-style encoders can be "
                         "sliced into a student (use distill.student_init: config or checkpoint)")
    return layers


def slice_teacher(teacher: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A copy of ``teacher`` holding only the encoder layers ``keep`` (embeddings, pooler and head copied too)."""
    layers = encoder_layers(teacher)
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad:
        raise ConfigError(f"distill.teacher_layers: layer {bad[0]} does not exist (the teacher has layers "
                          f"0..{len(layers) - 1})")
    if list(keep) != sorted(set(keep)):
        raise ConfigError(f"distill.teacher_layers must be increasing and distinct (got {list(keep)})")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    student = type(teacher)(config)
    state = teacher.state_dict()
    prefix = _layer_prefix(teacher)
    renamed = {}
    for name, value in state.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) in keep:
                renamed[f"{prefix}{list(keep).index(int(index))}.{rest}"] = value
        else:
            renamed[name] = value
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise InputError(f"cannot slice the teacher: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student


def _layer_prefix(model: torch.nn.Module) -> str:
    layers = encoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name + "."
    raise AssertionError("encoder layers not found by name")


def from_config(teacher: torch.nn.Module, overrides: dict[str, int]) -> torch.nn.Module:
    """A randomly initialised model of the teacher's class and labels, reshaped by ``overrides`` (BertConfig keys)."""
    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        setattr(config, key, value)
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(f"distill.student_config: hidden_size {config.hidden_size} is not a multiple of "
                          f"num_attention_heads {config.num_attention_heads}")
    return type(teacher)(config)


def from_checkpoint(path: str | Path, teacher: torch.nn.Module, task: str) -> torch.nn.Module:
    """A BERT checkpoint (e.g. our pretrained export) with a fresh head for the teacher's labels."""
    from bertflow.bert_core.finetune.model import build_model, check_model_dir

    student = build_model(check_model_dir(path, "distill.student_model"), task,
                          [teacher.config.id2label[i] for i in range(teacher.config.num_labels)])
    if student.config.vocab_size != teacher.config.vocab_size:
        raise InputError(f"distill.student_model {path}: vocabulary of {student.config.vocab_size} tokens, the "
                         f"teacher's has {teacher.config.vocab_size}; a student must read the teacher's tokens")
    return student


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
