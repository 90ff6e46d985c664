"""Load a base BERT with a fresh head (classification, token tags, answer spans), pick the device, set CPU threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from bertflow.bert_core.cpu_bf16 import require_native_bf16
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.safeload import hf_model_kwargs, load_error, load_errors, require_safe_weights


def check_model_dir(path: str | Path, what: str = "base model") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{what} directory {p} not found (set finetune.base_model or run pretraining first)")
    if not (p / "config.json").is_file():
        raise InputError(f"{what} directory {p} has no config.json: it is not a Hugging Face model directory")
    return p


def max_positions(model_dir: str | Path) -> int:
    """How many positions the model embeds: inputs longer than this cannot be fed to it."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings", 512))


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"finetune.device: {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"finetune.device: {spec!r} asked for, but no CUDA device is available (use auto or cpu)")
    return device


def autocast_dtype(device: torch.device, bf16: bool, cpu_bf16: bool = False) -> torch.dtype | None:
    """bf16 autocast on CUDA devices that support it (``bf16``) and, asked for by ``cpu_bf16``, on CPUs with
    native bf16 matmuls (AVX-512 BF16, AMX; an error on other CPUs); None (fp32) everywhere else."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if cpu_bf16 and device.type == "cpu":
        require_native_bf16("finetune.cpu_bf16", "set it false")
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[int]:
    """Use ``n`` torch threads (0: every core this process may run on), restored afterwards."""
    if n == 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence "newly initialized weights" reports (a fresh head is the point of fine-tuning) and
    per-file progress bars while loading or saving; the previous settings come back afterwards."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load a tokenizer from {model_dir} (it needs vocab.txt or tokenizer.json): {exc}"
        ) from None


def _auto_class(task: str):
    import transformers

    return getattr(transformers, {"token": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering"}
                   .get(task, "AutoModelForSequenceClassification"))


def build_model(model_dir: str | Path, task: str, label_names: Sequence[str], allow_pickle_weights: bool = False):
    """The base encoder with a new, randomly initialised head for ``label_names`` (qa: start/end logits)."""
    require_safe_weights(model_dir, allow_pickle_weights, "--set finetune.allow_pickle_weights=true")
    auto = _auto_class(task)
    labels = {}
    if task != "qa":
        labels = dict(num_labels=len(label_names), id2label={i: n for i, n in enumerate(label_names)},
                      label2id={n: i for i, n in enumerate(label_names)})
    with quiet_transformers():
        try:
            return auto.from_pretrained(str(model_dir), **labels, **hf_model_kwargs(allow_pickle_weights))
        except load_errors() as exc:  # a truncated model.safetensors too: named, not a raw SafetensorError
            raise load_error(model_dir, f"cannot load a BERT model from {model_dir}", exc) from None


def load_finetuned(model_dir: str | Path, task: str, allow_pickle_weights: bool = False):
    """An exported fine-tuned model, through the Auto classes as any Hugging Face user would."""
    require_safe_weights(model_dir, allow_pickle_weights, "allow_pickle_weights=True")
    auto = _auto_class(task)
    try:
        with quiet_transformers():
            return auto.from_pretrained(str(model_dir), **hf_model_kwargs(allow_pickle_weights))
    except load_errors() as exc:
        raise load_error(model_dir, f"cannot load a fine-tuned model from {model_dir}", exc) from None
