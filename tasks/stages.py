"""One Prefect task per pipeline stage, each a thin wrapper over ``bert_core.<stage>.stage.run``.

Tasks take configs and paths, return paths and counts (never data), and use
``cache_policy=NO_CACHE``: stage reuse is decided by content keys (see
``tasks.reuse``), not by Prefect hashing the inputs. Stages that touch files retry
transient errors with backoff; training stages do not (they resume from
checkpoints instead). The flow applies the configured backoff and timeouts with
:func:`configured`.
"""

from __future__ import annotations

import dataclasses

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from bertflow.bert_core.distill.config import DistillConfig
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.flowconfig import FlowConfig
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.vocab.config import VocabConfig
from bertflow.tasks import reuse, tracking
from bertflow.tasks.stage_runner import StageRun, TrackingContext, run_stage

def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures only: bad input/config or a timeout fails at once (a retry would repeat it)."""
    from bertflow.bert_core.errors import BertflowError

    try:
        state.result()
    except (BertflowError, TimeoutError):
        return False
    except Exception:
        return True
    return False


IO_OPTIONS = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_jitter_factor=0.2,
           retry_condition_fn=_retry_unless_user_error)
_TRAIN = dict(cache_policy=NO_CACHE, retries=0)
DATA_STAGES = ("ingest", "vocab", "vocab-frozen", "mask", "score")


def configured(stage_task: Task, flow_cfg: FlowConfig) -> Task:
    """``stage_task`` with the run's retry backoff and timeout (``flow`` section of the config).

    Data stages retry transient errors with backoff; training stages never retry (they
    resume from checkpoints on the next run instead) but still get a wall-clock cap.
    """
    if stage_task.name in DATA_STAGES:
        return stage_task.with_options(
            retries=flow_cfg.retries,
            retry_delay_seconds=flow_cfg.retry_delays() or 0,
            retry_jitter_factor=flow_cfg.retry_jitter,
            timeout_seconds=flow_cfg.data_stage_timeout_minutes * 60,
        )
    return stage_task.with_options(timeout_seconds=flow_cfg.train_stage_timeout_minutes * 60)


@task(name="ingest", **IO_OPTIONS)
def ingest(ctx: TrackingContext, cfg: IngestConfig, out_dir: str) -> StageRun:
    """Raw files -> clean, deduplicated, sharded Parquet corpus."""
    from bertflow.bert_core.ingest.stage import run

    return run_stage("ingest", ctx, cfg, lambda m, p: run(cfg, out_dir, on_progress=p), out_dir,
                     inputs={"files": list(cfg.inputs)})


@task(name="vocab", **IO_OPTIONS)
def vocab(ctx: TrackingContext, cfg: VocabConfig, corpus_dir: str, out_dir: str) -> StageRun:
    """Corpus -> WordPiece tokenizer directory."""
    from bertflow.bert_core.vocab.stage import run

    return run_stage(
        "vocab", ctx, cfg, lambda m, p: run(cfg, corpus_dir, out_dir, on_progress=p), out_dir, inputs={"corpus": corpus_dir}
    )


@task(name="vocab-frozen", **IO_OPTIONS)
def frozen_vocab(ctx: TrackingContext, base_model_dir: str, out_dir: str) -> StageRun:
    """The base model's own tokenizer as the vocab stage's output (continuing pretraining keeps its ids)."""
    from bertflow.bert_core.vocab.frozen import run

    return run_stage("vocab", ctx, {"frozen_from": base_model_dir}, lambda m, p: run(base_model_dir, out_dir),
                     out_dir, inputs={"base_model": base_model_dir})


@task(name="mask", **IO_OPTIONS)
def mask(ctx: TrackingContext, cfg: MaskConfig, corpus_dir: str, tokenizer_dir: str, out_dir: str) -> StageRun:
    """Corpus + tokenizer -> masked-data Parquet shards."""
    from bertflow.bert_core.mask.stage import run

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
) -> StageRun:
    """Masked data -> pretrained BERT (checkpoints + Hugging Face export).

    The training directory resumes (a crash costs at most ``checkpoint_every`` steps),
    also after a runtime knob changed or bertflow was upgraded. When its training identity
    changed (``bert_core.pretrain.identity``: model, optimizer, schedule, data, tokenizer,
    init weights, seed), it is moved to ``<out_dir>.previous`` and training starts afresh.
    """
    from bertflow.bert_core.pretrain.stage import run

    _claim_training_dir(cfg, data_dir, tokenizer_dir, out_dir)
    return run_stage(
        "pretrain",
        ctx,
        cfg,
        lambda m, p: run(cfg, data_dir, tokenizer_dir, out_dir, on_metrics=m, on_progress=p),
        out_dir,
        inputs={"data": data_dir, "tokenizer": tokenizer_dir},
    )


def _claim_training_dir(cfg: PretrainConfig, data_dir: str, tokenizer_dir: str, out_dir: str) -> None:
    """Set ``out_dir`` aside, saying why, when it cannot resume with these settings."""
    from pathlib import Path

    from bertflow.bert_core.pretrain.identity import set_aside
    from bertflow.bert_core.pretrain.stage import resume_changes

    (Path(out_dir) / ".bertflow-train-key").unlink(missing_ok=True)  # the key marker earlier versions kept
    changed = resume_changes(cfg, data_dir, tokenizer_dir, out_dir)
    if changed:
        previous = set_aside(out_dir)
        get_run_logger().warning("pretrain: %s changed, so %s cannot resume; previous training moved to %s",
                                 "; ".join(changed), out_dir, previous)


@task(name="finetune", **_TRAIN)
def finetune(ctx: TrackingContext, cfg: FinetuneConfig, base_model_dir: str, out_dir: str) -> StageRun:
    """Base BERT + labeled data -> classifier, logged and registered in MLflow as `candidate`."""
    from bertflow.bert_core.finetune.stage import run
    from bertflow.tasks.models import register_finetuned

    summary = run_stage(
        "finetune",
        ctx,
        cfg,
        lambda m, p: run(cfg, base_model_dir, out_dir, on_metrics=m, on_progress=p),
        out_dir,
        inputs={"base_model": base_model_dir, "train": cfg.train_path, "valid": cfg.valid_path},
    )
    if summary.reused and summary.registry is not None:
        return summary  # this exact model is already registered
    summary = dataclasses.replace(summary, registry=register_finetuned(ctx, cfg, summary, base_model_dir))
    reuse.save(out_dir, summary.stage_key, summary.to_json())
    return summary


@task(name="distill", **_TRAIN)
def distill(ctx: TrackingContext, cfg: DistillConfig, data_cfg: FinetuneConfig, teacher: str, out_dir: str) -> StageRun:
    """Fine-tuned teacher -> smaller student, registered as a new version of the teacher's model (tag
    ``distilled_from``) and promoted only by the rule every candidate meets.

    A registry alias is pinned once, so the reuse key, the download and the tag name one version.
    """
    from bertflow.bert_core.distill.stage import run
    from bertflow.tasks.models import pin_model, register_distilled, resolve_model

    ref = pin_model(teacher, ctx.tracking_uri)

    def body(m, p):
        teacher_dir = resolve_model(ref.pinned, ctx.workspace, ctx.tracking_uri)
        return run(cfg, data_cfg, teacher_dir, out_dir, teacher_ref=ref.version or ref.uri, on_metrics=m,
                   on_progress=p)

    summary = run_stage("distill", ctx, {"distill": cfg, "data": data_cfg}, body, out_dir,
                        inputs={"teacher": ref.pinned, "train": data_cfg.train_path, "valid": data_cfg.valid_path,
                                **({"unlabeled": list(cfg.unlabeled)} if cfg.unlabeled else {})})
    if summary.reused and summary.registry is not None:
        return summary
    name = cfg.registered_model_name or (ref.version.split("/")[0] if ref.version else data_cfg.registered_model_name)
    summary = dataclasses.replace(summary, registry=register_distilled(ctx, name, summary, ref.version or ref.uri))
    reuse.save(out_dir, summary.stage_key, summary.to_json())
    return summary


@task(name="score", **IO_OPTIONS)
def score(ctx: TrackingContext, cfg: ScoreConfig, model: str, out_dir: str) -> StageRun:
    """Parquet lake + model (MLflow URI or local HF dir) -> scored Parquet lake, on the runner ``cfg.runner`` names.

    A registry alias (``models:/name@champion``) is pinned to its version once, here: the
    reuse key, the download and the ``model_version`` column (``name/N``) all see that version.
    The ONNX backends keep their files in ``<workspace>/score/.onnx`` and in MLflow
    (:mod:`tasks.onnx_cache`); a failed parity gate still logs its figures to the run.
    """
    from bertflow.bert_core.errors import ParityError
    from bertflow.bert_core.score.config import ONNX_BACKENDS
    from bertflow.bert_core.score.stage import run
    from bertflow.tasks import onnx_cache
    from bertflow.tasks.models import pin_model, resolve_model
    from bertflow.tasks.score_files import file_scorer

    ref = pin_model(model, ctx.tracking_uri)
    cache = onnx_cache.cache_dir(ctx.workspace)
    used: dict[str, str | None] = {}

    def body(m, p):
        model_dir = resolve_model(ref.pinned, ctx.workspace, ctx.tracking_uri)
        used["model_dir"] = model_dir
        if cfg.backend in ONNX_BACKENDS:
            used["fetched"] = onnx_cache.fetch(ref, model_dir, cache, cfg.backend, ctx.tracking_uri)
        try:
            return run(cfg, model_dir, out_dir, model_uri=ref.uri, model_version=ref.version, on_progress=p,
                       score_files=file_scorer(cfg), cache_dir=cache)
        except ParityError as exc:
            m(0, exc.figures)  # the refused backend's figures, in the run that failed
            raise

    summary = run_stage("score", ctx, cfg, body, out_dir, inputs={"model": ref.pinned, "lake": cfg.input})
    if cfg.backend in ONNX_BACKENDS and not summary.reused and "model_dir" in used:
        if used.get("fetched"):
            tracking.set_tags(ctx.tracking_uri, summary.run_id, {"bertflow.onnx_source": used["fetched"]})
        else:
            onnx_cache.publish(ref, used["model_dir"], cache, cfg.backend, summary.run_id, ctx.tracking_uri)
    return summary
