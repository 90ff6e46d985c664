"""Mapping between our parameter names and ``transformers``' BERT names, and reading HF dirs.

Ours fuse Q/K/V into one ``qkv`` matrix; transformers keeps ``query``/``key``/``value``.
Everything else is a rename. The tied MLM decoder weight is not stored (transformers
re-ties it from the word embeddings on load, and its bias is ``cls.predictions.bias``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.pretrain.model import ModelConfig

PRE_LN_MODEL_TYPE = "bertflow_preln"  # transformers does not know it, so it refuses to load it (on purpose)

_TOP = [  # (ours, transformers) for non-layer parameters
    ("embeddings.word.", "bert.embeddings.word_embeddings."),
    ("embeddings.position.", "bert.embeddings.position_embeddings."),
    ("embeddings.token_type.", "bert.embeddings.token_type_embeddings."),
    ("embeddings.norm.", "bert.embeddings.LayerNorm."),
    ("mlm_head.transform.", "cls.predictions.transform.dense."),
    ("mlm_head.norm.", "cls.predictions.transform.LayerNorm."),
    ("mlm_head.bias", "cls.predictions.bias"),
    ("nsp_head.pooler.", "bert.pooler.dense."),
    ("nsp_head.classifier.", "cls.seq_relationship."),
]
_LAYER = [  # (ours, transformers) within layer i
    ("attn.proj.", "attention.output.dense."),
    ("attn_norm.", "attention.output.LayerNorm."),
    ("mlp.fc_in.", "intermediate.dense."),
    ("mlp.fc_out.", "output.dense."),
    ("mlp_norm.", "output.LayerNorm."),
]
_QKV = ("query", "key", "value")
_OUR_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers ``BertForPreTraining``/``BertForMaskedLM`` names."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        m = _OUR_LAYER.match(name)
        if m:
            i, rest = m.groups()
            prefix = f"bert.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                for part, chunk in zip(_QKV, tensor.chunk(3, dim=0)):
                    out[f"{prefix}attention.self.{part}.{kind}"] = chunk.contiguous()
                continue
            out[prefix + _rename(rest, _LAYER, name)] = tensor
            continue
        if name.startswith("final_norm."):
            raise ValueError("a pre-LN model has no transformers equivalent (final_norm); export it natively")
        out[_rename(name, _TOP, name)] = tensor
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers BERT names (``BertModel``, ``BertForPreTraining``, ``BertForMaskedLM``...) -> ours.

    Accepts keys with or without the ``bert.`` prefix and the old ``gamma``/``beta``
    LayerNorm names; drops buffers and the tied decoder.
    """
    norm: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not name.startswith(("bert.", "cls.")):
            name = "bert." + name
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name.endswith(("position_ids", "token_type_ids")) or name.startswith("cls.predictions.decoder."):
            continue
        norm[name] = tensor
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in norm.items():
        m = _HF_LAYER.match(name)
        if m:
            i, rest = m.groups()
            sm = re.match(r"^attention\.self\.(query|key|value)\.(weight|bias)$", rest)
            if sm:
                qkv.setdefault((i, sm.group(2)), {})[sm.group(1)] = tensor
                continue
            out[f"layers.{i}." + _rename(rest, [(b, a) for a, b in _LAYER], name)] = tensor
            continue
        out[_rename(name, [(b, a) for a, b in _TOP], name)] = tensor
    for (i, kind), parts in qkv.items():
        if set(parts) != set(_QKV):
            raise InputError(f"layer {i} has only {sorted(parts)} of query/key/value {kind}s")
        out[f"layers.{i}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def _rename(name: str, table: list[tuple[str, str]], original: str) -> str:
    for src, dst in table:
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(f"no transformers equivalent for parameter {original!r}")


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """``config.json`` for a transformers BERT (or, for pre-LN, our own model type)."""
    arch = "BertForPreTraining" if cfg.with_nsp else "BertForMaskedLM"
    return {
        "architectures": [arch] if not cfg.pre_ln else ["BertflowPreLNForPretraining"],
        "model_type": "bert" if not cfg.pre_ln else PRE_LN_MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bertflow_pre_ln": cfg.pre_ln,
        "bertflow_with_nsp": cfg.with_nsp,
    }


def model_config_from_hf(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """ModelConfig fields from an HF/bertflow ``config.json`` (vocab and shape)."""
    model_type = config.get("model_type")
    if model_type not in ("bert", PRE_LN_MODEL_TYPE):
        raise InputError(f"{where}: model_type {model_type!r} is not a BERT (need 'bert')")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise InputError(f"{where}: hidden_act {act!r} is not supported (our BERT uses exact 'gelu')")
    pos = config.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise InputError(f"{where}: position_embedding_type {pos!r} is not supported (need 'absolute')")
    try:
        return {
            "vocab_size": int(config["vocab_size"]),
            "hidden_size": int(config["hidden_size"]),
            "num_layers": int(config["num_hidden_layers"]),
            "num_heads": int(config["num_attention_heads"]),
            "intermediate_size": int(config["intermediate_size"]),
            "max_position_embeddings": int(config.get("max_position_embeddings", 512)),
            "type_vocab_size": int(config.get("type_vocab_size", 2)),
            "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
            "pre_ln": model_type == PRE_LN_MODEL_TYPE,
        }
    except KeyError as exc:
        raise InputError(f"{where}: config.json lacks {exc.args[0]!r}") from None


def read_hf_dir(
    path: str | Path, allow_pickle_weights: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and our-named weights of an HF BERT dir or a bertflow export.

    Weights come from safetensors; a ``pytorch_model.bin`` is read (with ``weights_only=True``)
    only when ``allow_pickle_weights`` is set, else it is an InputError naming the file.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path} is not a model directory: config.json is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{cfg_path} is unreadable: {exc}") from None
    shape = model_config_from_hf(config, cfg_path)
    state = _read_weights(path, allow_pickle_weights)
    if shape["pre_ln"]:
        return shape, state  # a bertflow pre-LN export is stored with our own names
    return shape, from_hf_state_dict(state)


def _read_weights(path: Path, allow_pickle_weights: bool) -> dict[str, torch.Tensor]:
    from bertflow.bert_core.pretrain.checkpoint import load_safetensors, load_torch
    from bertflow.bert_core.safeload import require_safe_weights

    require_safe_weights(path, allow_pickle_weights, "--set pretrain.allow_pickle_weights=true")
    single = path / "model.safetensors"
    if single.is_file():
        return load_safetensors(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"{index} is unreadable: {exc}") from None
        state: dict[str, torch.Tensor] = {}
        for name in files:
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise InputError(f"{index} names shard {name!r}: shards must be plain file names in {path}")
            state.update(load_safetensors(path / name))
        return state
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        return load_torch(binary)
    raise InputError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")
