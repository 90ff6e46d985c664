"""Glue between fine-tuning, the MLflow Model Registry and scoring."""

from __future__ import annotations

from pathlib import Path

from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.tasks import champion, registry, tracking
from bertflow.tasks.stage_runner import Registration, StageRun, TrackingContext


def register_finetuned(ctx: TrackingContext, cfg: FinetuneConfig, summary: StageRun, base_model_dir: str) -> Registration:
    """Log the fine-tuned HF dir as an MLflow model, register it as `candidate`, promote if better.

    A promoted version also gets a snapshot of the pretrained base it was fine-tuned
    from, so a later run can continue pretraining from the champion (``tasks.champion``).
    """
    details = summary.details
    metrics = summary.metrics
    c = tracking.client(ctx.tracking_uri)
    model_uri = registry.log_model(details["model_dir"], summary.run_id, tracking_uri=ctx.tracking_uri)
    version = registry.register(model_uri, cfg.registered_model_name, client=c)
    decision = registry.promote(
        cfg.registered_model_name,
        version,
        metric_name="eval_metric",
        score=float(metrics["eval_metric"]),
        eval_digest=str(details.get("eval_set_digest", "")),
        client=c,
    )
    base = None
    if decision["promoted"]:
        base = champion.snapshot_base(ctx.tracking_uri, cfg.registered_model_name, str(version), base_model_dir,
                                      ctx.workspace)
    return Registration(
        name=cfg.registered_model_name, version=str(version), model_uri=model_uri, promoted=decision["promoted"],
        reason=decision["reason"], candidate_score=decision["candidate_score"],
        champion_score=decision["champion_score"], champion_version=decision["champion_version"], pretrain_base=base)


def resolve_model(model: str, workspace: str) -> str:
    """A local HF directory for ``model`` (a local dir, or an MLflow ``models:/``/``runs:/`` URI)."""
    dst = Path(workspace) / "model-cache"
    return str(registry.resolve_model_dir(model, dst))
