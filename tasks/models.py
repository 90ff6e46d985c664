"""Glue between fine-tuning, the MLflow Model Registry and scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertflow import __version__
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.evaluate import HEADLINE
from bertflow.bert_core.stageio import read_manifest
from bertflow.tasks import champion, registry, tracking
from bertflow.tasks.stage_runner import Registration, StageRun, TrackingContext

LINEAGE_PREFIX = "bertflow."  # model-version (and LoggedModel) tags saying where a version came from


def register_finetuned(ctx: TrackingContext, cfg: FinetuneConfig, summary: StageRun, base_model_dir: str) -> Registration:
    """Log the fine-tuned HF dir as an MLflow model, register it as `candidate`, promote if better.

    The version is tagged with its lineage (:func:`lineage_tags`). A promoted version also
    gets a snapshot of the pretrained base it was fine-tuned from, so a later run can
    continue pretraining from the champion (``tasks.champion``).
    """
    lineage = lineage_tags(cfg, summary, base_model_dir)
    return _log_register_promote(ctx, cfg.registered_model_name, summary, lineage, base_model_dir)


def register_distilled(ctx: TrackingContext, name: str, summary: StageRun, teacher: str) -> Registration:
    """Log a distilled student, register it as a new version of ``name`` (alias `candidate`, tag
    ``distilled_from``: the teacher's ``name/N`` or directory) and promote it only if it beats the
    champion on the same evaluation set, as any candidate."""
    from bertflow.bert_core.distill.stage import STAGE

    manifest = read_manifest(summary.path, STAGE)
    inputs = manifest.get("inputs", {})
    m = summary.metrics
    tags = {
        "version": __version__,
        "task": summary.details.get("task"),
        "distilled_from": teacher,
        "teacher_digest": inputs.get("teacher_digest"),
        "train_data": inputs.get("train_path"),
        "train_digest": inputs.get("train_digest"),
        "valid_data": inputs.get("valid_path"),
        "valid_digest": inputs.get("valid_digest"),
        "eval_set_digest": summary.details.get("eval_set_digest"),
        "eval_metric": HEADLINE[str(summary.details.get("task", "sequence"))],
        "eval_metric_value": m.get("eval_metric"),
        "teacher_eval_metric_value": m.get("teacher_eval_metric"),
        "agreement_with_teacher": m.get("agreement_with_teacher"),
        "student_layers": int(m["student_layers"]) if "student_layers" in m else None,
        "temperature": manifest.get("config", {}).get("temperature"),
        "distill_run_id": summary.run_id,
    }
    lineage = {LINEAGE_PREFIX + k: str(v) for k, v in tags.items() if v not in (None, "")}
    lineage["distilled_from"] = teacher  # the plain tag the registry UI and searches show
    return _log_register_promote(ctx, name, summary, lineage, None)


def _log_register_promote(ctx: TrackingContext, name: str, summary: StageRun, lineage: dict[str, str],
                          base_model_dir: str | None) -> Registration:
    details = summary.details
    c = tracking.client(ctx.tracking_uri)
    model_uri = registry.log_model(details["model_dir"], summary.run_id, tracking_uri=ctx.tracking_uri, tags=lineage)
    version = registry.register(model_uri, name, client=c, tags=lineage)
    decision = registry.promote(
        name,
        version,
        metric_name="eval_metric",
        score=float(summary.metrics["eval_metric"]),
        eval_digest=str(details.get("eval_set_digest", "")),
        client=c,
    )
    base = None
    if decision["promoted"] and base_model_dir is not None:
        base = champion.snapshot_base(ctx.tracking_uri, name, str(version), base_model_dir, ctx.workspace)
    return Registration(
        name=name, version=str(version), model_uri=model_uri, promoted=decision["promoted"],
        reason=decision["reason"], candidate_score=decision["candidate_score"],
        champion_score=decision["champion_score"], champion_version=decision["champion_version"], pretrain_base=base)


def lineage_tags(cfg: FinetuneConfig, summary: StageRun, base_model_dir: str) -> dict[str, str]:
    """Where a fine-tuned model came from: base checkpoint, training data, evaluation set and score, bertflow version.

    Read from the finetune stage's manifest (the digests it computed), so the tags describe
    exactly the inputs the model was trained on.
    """
    manifest = read_manifest(summary.path, "finetune")
    inputs = manifest.get("inputs", {})
    tags = {
        "version": __version__,
        "task": cfg.task,
        "base_model": str(base_model_dir),
        "base_model_digest": inputs.get("base_model_digest"),
        "train_data": inputs.get("train_path"),
        "train_digest": inputs.get("train_digest"),
        "valid_data": inputs.get("valid_path"),
        "valid_digest": inputs.get("valid_digest"),
        "eval_set_digest": summary.details.get("eval_set_digest"),
        "eval_metric": HEADLINE[cfg.task],
        "eval_metric_value": summary.metrics.get("eval_metric"),
        "finetune_run_id": summary.run_id,
    }
    return {LINEAGE_PREFIX + k: str(v) for k, v in tags.items() if v not in (None, "")}


@dataclass(frozen=True)
class ModelRef:
    """A model to score with, resolved once per run: an alias is pinned to the version it points at now."""

    uri: str  # as given: a local directory or an MLflow model URI
    pinned: str  # ``models:/name/N`` for a registry alias; otherwise ``uri``
    version: str | None  # ``name/N`` for a registry model; None: scoring records the weights' fingerprint


def pin_model(model: str, tracking_uri: str | None = None) -> ModelRef:
    """Pin ``model`` (``models:/name@alias`` -> its version now); local directories and other URIs stay as they are."""
    if not str(model).startswith("models:/"):
        return ModelRef(str(model), str(model), None)
    pinned, version = registry.pin(tracking.client(tracking_uri), str(model))
    return ModelRef(str(model), pinned, version)


def resolve_model(model: str, workspace: str, tracking_uri: str | None = None) -> str:
    """A local HF directory for ``model`` (a local dir, or an MLflow ``models:/``/``runs:/`` URI)."""
    dst = Path(workspace) / "model-cache"
    return str(registry.resolve_model_dir(model, dst, tracking_uri=tracking_uri))
