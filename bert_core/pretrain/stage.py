"""Pretraining stage entry point: masked data + tokenizer -> checkpoints and an HF export.

``out_dir`` is a persistent training directory, not an atomic stage output::

    out_dir/
      run.json                      its training identity (see ``identity``): config, data, tokenizer, init, processes
      checkpoints/step-0000500/     model.safetensors, optimizer.pt, rng.pt, trainer_state.json
      export/                       HF dir: config.json, model.safetensors, tokenizer files
      manifest.json                 written when training ends

Re-running continues from the newest checkpoint (after a crash or ``kill -9`` at any
point, a changed runtime knob or a code upgrade), or just returns the result if
training had finished. A changed training identity is refused, naming what changed,
unless ``restart=True`` moves the old directory to ``<out_dir>.previous``.

Under ``torchrun`` every rank calls :func:`run`; rank 0 writes files and calls the
callbacks; all ranks return the same result.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.pretrain import checkpoint as ckpt
from bertflow.bert_core.pretrain import distributed, identity
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.pretrain.identity import EXPORT
from bertflow.bert_core.pretrain.inputs import DataInfo, check_tokenizer, read_data_info
from bertflow.bert_core.stageio import MANIFEST, MetricsFn, ProgressFn, StageResult, write_manifest


def run(
    cfg: PretrainConfig,
    data_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    on_metrics: MetricsFn | None = None,
    on_progress: ProgressFn | None = None,
    restart: bool = False,
) -> StageResult:
    """Pretrain (or continue pretraining) a BERT on a masked-data directory.

    ``restart``: when ``out_dir`` holds a run with another training identity, move it to
    ``<out_dir>.previous`` and start afresh (else that is an InputError naming what changed).
    Returns metrics ``steps``, ``tokens``, ``final_loss``, ``mlm_accuracy``
    (+ ``nsp_accuracy``), ``tokens_per_s``, ``minutes`` and details ``export_dir``,
    ``checkpoint_dir`` (+ ``resumed_from_step``, or ``set_aside`` and ``changed``).
    """
    dist, device = distributed.setup(cfg.device)
    try:
        return _run(cfg, Path(data_dir), Path(tokenizer_dir), Path(out_dir), dist, device, on_metrics, on_progress,
                    restart)
    finally:
        distributed.teardown(dist)


def resume_changes(cfg: PretrainConfig, data_dir: str | Path, tokenizer_dir: str | Path,
                   out_dir: str | Path) -> list[str]:
    """What keeps ``out_dir`` from resuming with these settings (empty: it resumes, or starts fresh).

    For callers that act before :func:`run` (the pipeline sets such a directory aside and says why).
    """
    data = read_data_info(data_dir)
    check_tokenizer(tokenizer_dir, data)
    return identity.changes(out_dir, identity.training_identity(cfg, data, tokenizer_dir, distributed.world_size()))


def _run(cfg, data_dir, tokenizer_dir, out, dist, device, on_metrics, on_progress, restart) -> StageResult:
    from bertflow.bert_core.pretrain.export import export_model
    from bertflow.bert_core.pretrain.trainer import RunSpec, Trainer

    data = read_data_info(data_dir)
    check_tokenizer(tokenizer_dir, data)
    ident = identity.training_identity(cfg, data, tokenizer_dir, dist.world_size)
    details: dict[str, Any] = {}
    changed = identity.changes(out, ident)
    if changed and not restart:
        raise identity.refusal(out, changed)
    init_shape, init_state = _read_init(ident.init_dir, cfg.allow_pickle_weights)
    model_cfg = build_model_config(cfg, data, init_shape)
    distributed.barrier(dist)  # every rank has read out/run.json before rank 0 moves it
    if dist.is_main:
        if changed:
            details.update(set_aside=str(identity.set_aside(out)), changed=changed)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(out)
        identity.write_record(out, ident, data_dir, tokenizer_dir)
    distributed.barrier(dist)

    spec = RunSpec(world_size=dist.world_size, fingerprint={"identity": ident.digest})
    trainer = Trainer(cfg, model_cfg, data, out, dist, device, spec, on_metrics, on_progress)
    points = ckpt.list_checkpoints(out)
    if points:
        trainer.restore(ckpt.load_checkpoint(points[-1]))
        details["resumed_from_step"] = trainer.state.step
    elif init_state is not None:
        details["init_report"] = trainer.load_init(init_state, str(cfg.init_from))
    metrics = trainer.fit()

    export_dir = out / EXPORT
    latest = ckpt.list_checkpoints(out)[-1]
    provenance = {"step": trainer.state.step, "tokens": trainer.state.tokens, "data_fingerprint": data.fingerprint,
                  "checkpoint": latest.name}
    export_info: dict[str, Any] = {}
    if dist.is_main:
        if not _export_is_current(export_dir, trainer.state.step):
            export_info = export_model(trainer.model.state_dict(), model_cfg, tokenizer_dir, export_dir, provenance)
        else:
            export_info = _read_export_info(export_dir)
        write_manifest(out, {
            "stage": "pretrain",
            "config": to_dict(cfg),
            "model_config": asdict(model_cfg),
            "data_dir": str(data_dir),
            "data_fingerprint": data.fingerprint,
            "tokenizer_dir": str(tokenizer_dir),
            "init_from": cfg.init_from,
            "world_size": dist.world_size,
            "metrics": metrics,
            "export": {"dir": EXPORT, **export_info},
            "checkpoint": f"{ckpt.CHECKPOINTS}/{latest.name}",
        })
    distributed.barrier(dist)
    if not dist.is_main:
        export_info = _read_export_info(export_dir)
    details.update({
        "export_dir": str(export_dir),
        "checkpoint_dir": str(latest),
        "export_architecture": export_info.get("architecture", ""),
        "hf_compatible": export_info.get("hf_compatible", not model_cfg.pre_ln),
        "world_size": dist.world_size,
    })
    if export_info.get("note"):
        details["export_note"] = export_info["note"]
    return StageResult(stage="pretrain", path=str(out), metrics=metrics, details=details)


def build_model_config(cfg: PretrainConfig, data: DataInfo, init_shape: dict[str, Any] | None):
    """Model shape from the config (or the init checkpoint), vocab from the data."""
    from bertflow.bert_core.pretrain.model import ModelConfig

    padded_vocab = -(-data.vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
    shape = {
        "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.layer_norm_eps, "pre_ln": cfg.pre_ln,
        "vocab_size": padded_vocab,
    }
    if init_shape is not None:
        if init_shape["vocab_size"] not in (data.vocab_size, padded_vocab):
            raise InputError(
                f"vocab size mismatch: init_from {cfg.init_from} has vocab_size {init_shape['vocab_size']} but the "
                f"masked data {data.data_dir} has {data.vocab_size}; generate the data with that model's tokenizer"
            )
        shape.update(init_shape)
    if data.max_seq_length > shape["max_position_embeddings"]:
        raise ConfigError(
            f"the masked data has sequences of up to {data.max_seq_length} tokens but the model has "
            f"max_position_embeddings={shape['max_position_embeddings']} (raise pretrain.max_position_embeddings)"
        )
    if data.has_nsp and shape["type_vocab_size"] < 2:
        raise ConfigError("nsp data has two segments: pretrain.type_vocab_size must be >= 2")
    if shape["hidden_size"] % shape["num_heads"]:
        raise InputError(f"hidden_size {shape['hidden_size']} is not divisible by num_heads {shape['num_heads']}")
    return ModelConfig(
        **shape,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        initializer_range=cfg.initializer_range,
        with_nsp=data.has_nsp,
        pad_token_id=data.special_ids["pad"],
        varlen_attention=cfg.varlen_attention,
    )


def _read_init(init: Path | None, allow_pickle_weights: bool = False):
    """The init_from model's shape and weights (None, None: train from scratch)."""
    if init is None:
        return None, None
    from bertflow.bert_core.pretrain.hf_compat import read_hf_dir

    return read_hf_dir(init, allow_pickle_weights)


def _export_is_current(export_dir: Path, step: int) -> bool:
    try:
        return json.loads((export_dir / MANIFEST).read_text(encoding="utf-8")).get("step") == step
    except (OSError, json.JSONDecodeError):
        return False


def _read_export_info(export_dir: Path) -> dict[str, Any]:
    try:
        m = json.loads((export_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    arch = m.get("architecture", "")
    from bertflow.bert_core.pretrain.export import PRE_LN_NOTE

    pre_ln = arch.startswith("BertflowPreLN")
    return {"architecture": arch, "hf_compatible": not pre_ln, "note": PRE_LN_NOTE if pre_ln else ""}
