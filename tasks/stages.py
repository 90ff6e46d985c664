"""One Prefect task per pipeline stage, each a thin wrapper over ``bert_core.<stage>.stage.run``.

Tasks take configs and paths, return paths and counts (never data), and use
``cache_policy=NO_CACHE``: stage reuse is decided by content keys (see
``tasks.reuse``), not by Prefect hashing the inputs. Stages that touch files retry
once; training stages do not (they resume from checkpoints instead).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bert_core.finetune.config import FinetuneConfig
from bert_core.ingest.config import IngestConfig
from bert_core.maskgen.config import MaskConfig
from bert_core.pretrain.config import PretrainConfig
from bert_core.score.config import ScoreConfig
from bert_core.vocab.config import VocabConfig
from tasks import reuse
from tasks.stage_runner import TrackingContext, run_stage

def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures only: a BertflowError (bad input/config) fails at once."""
    from bert_core.errors import BertflowError

    try:
        state.result()
    except BertflowError:
        return False
    except Exception:
        return True
    return False


_IO = dict(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_user_error)
_TRAIN = dict(cache_policy=NO_CACHE, retries=0)


@task(name="ingest", **_IO)
def ingest(ctx: TrackingContext, cfg: IngestConfig, out_dir: str) -> dict[str, Any]:
    """Raw files -> clean, deduplicated, sharded Parquet corpus."""
    from bert_core.ingest.stage import run

    return run_stage("ingest", ctx, cfg, lambda m, p: run(cfg, out_dir, on_progress=p), out_dir,
                     inputs={"files": list(cfg.inputs)})


@task(name="vocab", **_IO)
def vocab(ctx: TrackingContext, cfg: VocabConfig, corpus_dir: str, out_dir: str) -> dict[str, Any]:
    """Corpus -> WordPiece tokenizer directory."""
    from bert_core.vocab.stage import run

    return run_stage(
        "vocab", ctx, cfg, lambda m, p: run(cfg, corpus_dir, out_dir, on_progress=p), out_dir, inputs={"corpus": corpus_dir}
    )


@task(name="mask", **_IO)
def mask(ctx: TrackingContext, cfg: MaskConfig, corpus_dir: str, tokenizer_dir: str, out_dir: str) -> dict[str, Any]:
    """Corpus + tokenizer -> masked-data Parquet shards."""
    from bert_core.maskgen.stage import run

    return run_stage(
        "mask",
        ctx,
        cfg,
        lambda m, p: run(cfg, corpus_dir, tokenizer_dir, out_dir, on_progress=p),
        out_dir,
        inputs={"corpus": corpus_dir, "tokenizer": tokenizer_dir},
    )


@task(name="pretrain", **_TRAIN)
def pretrain(
    ctx: TrackingContext, cfg: PretrainConfig, data_dir: str, tokenizer_dir: str, out_dir: str
) -> dict[str, Any]:
    """Masked data -> pretrained BERT (checkpoints + Hugging Face export).

    The training directory resumes when rerun with the same config and data (a crash
    costs at most ``checkpoint_every`` steps). When config or data changed, the old
    training directory is moved to ``<out_dir>.previous`` and training starts afresh.
    """
    from bert_core.pretrain.stage import run

    inputs = {"data": data_dir, "tokenizer": tokenizer_dir}
    _claim_training_dir(out_dir, reuse.stage_key("pretrain", cfg, inputs))
    return run_stage(
        "pretrain",
        ctx,
        cfg,
        lambda m, p: run(cfg, data_dir, tokenizer_dir, out_dir, on_metrics=m, on_progress=p),
        out_dir,
        inputs=inputs,
    )


def _claim_training_dir(out_dir: str, key: str) -> None:
    """Mark ``out_dir`` as training for ``key``; set aside a directory trained for another key."""
    import shutil
    from pathlib import Path

    out = Path(out_dir)
    marker = out / ".bertflow-train-key"
    if out.exists() and (not marker.is_file() or marker.read_text().strip() != key):
        previous = out.with_name(out.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        out.rename(previous)
        get_run_logger().warning("pretrain config or data changed: previous training moved to %s", previous)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(key)


@task(name="finetune", **_TRAIN)
def finetune(ctx: TrackingContext, cfg: FinetuneConfig, base_model_dir: str, out_dir: str) -> dict[str, Any]:
    """Base BERT + labeled data -> classifier, logged and registered in MLflow as `candidate`."""
    from bert_core.finetune.stage import run
    from tasks.models import register_finetuned

    summary = run_stage(
        "finetune",
        ctx,
        cfg,
        lambda m, p: run(cfg, base_model_dir, out_dir, on_metrics=m, on_progress=p),
        out_dir,
        inputs={"base_model": base_model_dir, "train": cfg.train_path, "valid": cfg.valid_path},
    )
    if summary["reused"] and summary.get("registry"):
        return summary  # this exact model is already registered
    summary["registry"] = register_finetuned(ctx, cfg, summary)
    reuse.save(out_dir, summary["stage_key"], summary)
    return summary


@task(name="score", **_IO)
def score(ctx: TrackingContext, cfg: ScoreConfig, model: str, out_dir: str) -> dict[str, Any]:
    """Parquet lake + model (MLflow URI or local HF dir) -> scored Parquet lake."""
    from bert_core.score.stage import run
    from tasks.models import resolve_model

    def body(m, p):
        model_dir = resolve_model(model, ctx.workspace)
        return run(cfg, model_dir, out_dir, on_progress=p, model_uri=model)

    return run_stage("score", ctx, cfg, body, out_dir, inputs={"model": model, "lake": cfg.input})
