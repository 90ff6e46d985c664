"""The final Hugging Face directory: ``config.json`` + ``model.safetensors`` + tokenizer files.

It loads with ``BertForPreTraining`` (data with NSP) or ``BertForMaskedLM`` (without) and
with ``AutoModelForSequenceClassification`` (which adds its classifier), so fine-tuning
builds on it. Written atomically.

Pre-LN models have no transformers architecture. Their export keeps our own parameter
names and a ``config.json`` with ``model_type: bertflow_preln``, which transformers
refuses to load ("unrecognized model type"), rather than silently loading post-LN maths
over pre-LN weights; our own loaders (``init_from``) read it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.pretrain.hf_compat import hf_config, to_hf_state_dict
from bertflow.bert_core.pretrain.inputs import TOKENIZER_FILES
from bertflow.bert_core.pretrain.model import ModelConfig
from bertflow.bert_core.stageio import atomic_dir, write_manifest

PRE_LN_NOTE = (
    "pre-LN model: exported with bertflow's own parameter names and model_type 'bertflow_preln'; "
    "transformers cannot load it (no BERT architecture there is pre-LN). Use pre_ln=false for a "
    "transformers-compatible export."
)


def export_model(state: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer_dir: str | Path, export_dir: str | Path,
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """Write the export dir; return what was written (architecture, note)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    if not cfg.pre_ln:
        tensors = to_hf_state_dict(tensors)
    config = hf_config(cfg)
    tok_files = [Path(tokenizer_dir) / name for name in TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
    if not any(p.name in ("vocab.txt", "tokenizer.json") for p in tok_files):
        raise InputError(f"{tokenizer_dir} has no vocab.txt or tokenizer.json to ship with the model")
    with atomic_dir(export_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # safetensors writes 0600
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        for src in tok_files:
            shutil.copyfile(src, tmp / src.name)
        if cfg.pre_ln:
            (tmp / "README.md").write_text(PRE_LN_NOTE + "\n", encoding="utf-8")
        write_manifest(tmp, {"stage": "pretrain-export", "architecture": config["architectures"][0], **provenance})
    return {"architecture": config["architectures"][0], "hf_compatible": not cfg.pre_ln,
            "note": PRE_LN_NOTE if cfg.pre_ln else ""}
