"""The plumbing every stage task shares: a nested MLflow run, callbacks, a returned summary.

``bert_core`` stages take ``on_metrics``/``on_progress`` callbacks and return a
``StageResult``; this module plugs MLflow metrics and the progress display
(``tasks.progress``: terminal, log lines, Prefect artifact) into those callbacks and
turns the result into a :class:`StageRun` (paths and counts only, never data) for the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.stageio import MANIFEST, StageResult
from bertflow.tasks import lineage, reuse, tracking
from bertflow.tasks.progress import ProgressOptions, stage_progress


@dataclass(frozen=True)
class TrackingContext:
    """Where a flow's MLflow runs go, and how stages show progress; passed to every stage task (small, picklable)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    workspace: str
    flow_run_id: str = ""
    progress: ProgressOptions = ProgressOptions()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "progress": self.progress.model_dump()}


@dataclass(frozen=True)
class Registration:
    """Where fine-tuning put its model in the MLflow Model Registry, and whether it became the champion."""

    name: str
    version: str
    model_uri: str
    promoted: bool
    reason: str
    candidate_score: float | None = None
    champion_score: float | None = None
    champion_version: str | None = None
    pretrain_base: str | None = None  # the champion's pretrained-base snapshot (promoted versions only)


@dataclass(frozen=True)
class StageRun:
    """What one stage task did: its output, headline numbers and MLflow run (returned by every stage task)."""

    stage: str
    path: str  # the stage's output directory
    metrics: dict[str, float]
    details: dict[str, Any]  # stage-specific, JSON-able (e.g. per-file counts of scoring)
    run_id: str  # the stage's nested MLflow run
    seconds: float
    reused: bool  # True: inputs, config and code unchanged, the stored output was reused
    stage_key: str  # the content key the reuse decision is made on (see tasks.reuse)
    registry: Registration | None = None  # finetune only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageRun":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if isinstance(data.get("registry"), dict):
            data["registry"] = Registration(**data["registry"])
        return cls(**{"details": {}, "metrics": {}, **data})


def run_stage(
    stage: str,
    ctx: TrackingContext,
    cfg: Any,
    body: Callable[[Callable, Callable], StageResult],
    out_dir: str,
    inputs: dict[str, Any] | None = None,
) -> StageRun:
    """Run ``body(on_metrics, on_progress)`` inside a nested MLflow run named ``stage``.

    Logs the stage config as params, streamed metrics, system metrics (CPU, memory,
    GPU), the result's metrics and manifest, and the stage's wall time. If ``out_dir`` already holds this stage's
    output for the same config, input content and code (see ``tasks.reuse``), the
    stage is not recomputed: the run is tagged ``bertflow.reused`` and the stored
    summary returned.
    """
    logger = get_run_logger()
    uri = ctx.tracking_uri
    fingerprints = reuse.input_fingerprints(inputs or {})
    key = reuse.stage_key(stage, cfg, inputs or {}, fingerprints)
    stored = reuse.load(out_dir, key)
    cached = StageRun.from_json(stored) if stored else None
    run_id = tracking.start_run(
        uri,
        ctx.experiment_id,
        run_name=stage,
        parent_run_id=ctx.parent_run_id,
        tags={"bertflow.stage": stage, "prefect.flow_run_id": ctx.flow_run_id, "bertflow.reused": str(cached is not None),
              "bertflow.stage_key": key},
    )
    tracking.log_params(uri, run_id, to_dict(cfg))
    if inputs:
        tracking.set_tags(uri, run_id, {f"bertflow.input.{k}": str(v) for k, v in inputs.items()})
    lineage.log_datasets(uri, run_id, fingerprints, output=(out_dir, f"stage:{key}"))
    _link_artifact(stage, tracking.run_url(uri, ctx.experiment_id, run_id))
    if cached is not None:
        with tracking.run_scope(uri, run_id):
            tracking.log_metrics(uri, run_id, {**cached.metrics, "stage_seconds": 0.0})
            tracking.set_tags(uri, run_id, {"bertflow.output": cached.path, "bertflow.reused_from_run": cached.run_id})
        logger.info("%s reused: inputs, config and code unchanged since MLflow run %s", stage, cached.run_id)
        return dataclasses.replace(cached, run_id=run_id, reused=True, seconds=0.0)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(uri, run_id, metrics, step=step)

    t0 = time.perf_counter()
    with tracking.run_scope(uri, run_id):
        with tracking.system_metrics(uri, run_id):
            with stage_progress(stage, ctx.progress, logger) as on_progress:
                result = body(on_metrics, on_progress)
        seconds = time.perf_counter() - t0
        tracking.log_metrics(uri, run_id, {**result.metrics, "stage_seconds": seconds})
        _log_manifest(uri, run_id, result.path)
        tracking.set_tags(uri, run_id, {"bertflow.output": result.path})
    details = _jsonable(result.details)
    _table_artifacts(stage, details)
    logger.info("%s finished in %.1fs -> %s", stage, seconds, result.path)
    summary = StageRun(stage=stage, path=result.path, metrics=dict(result.metrics), details=details,
                       run_id=run_id, seconds=seconds, reused=False, stage_key=key)
    reuse.save(out_dir, key, summary.to_json())
    return summary


def _log_manifest(uri: str, run_id: str, out_dir: str) -> None:
    """The stage's manifest as an MLflow artifact, from a local folder or an object-store prefix."""
    import tempfile

    from bertflow.bert_core.storage import is_remote, locate

    if not is_remote(out_dir):
        manifest = Path(out_dir) / MANIFEST
        if manifest.is_file():
            tracking.log_artifact(uri, run_id, manifest)
        return
    try:
        body = locate(out_dir).child(MANIFEST).read_bytes()
    except OSError:
        return
    with tempfile.TemporaryDirectory(prefix="bertflow-manifest-") as tmp:
        (Path(tmp) / MANIFEST).write_bytes(body)
        tracking.log_artifact(uri, run_id, Path(tmp) / MANIFEST)


def _link_artifact(stage: str, url: str) -> None:
    """The stage's MLflow run as a Prefect link artifact (the MLflow run carries the flow-run id back)."""
    try:
        create_link_artifact(url, link_text=f"MLflow run: {stage}", key=f"mlflow-{stage}")
    except Exception:  # artifacts are a convenience; never fail a stage for one
        pass


def _table_artifacts(stage: str, details: dict[str, Any]) -> None:
    """Per-file counts (scoring) and per-class metrics (evaluation) as Prefect table artifacts."""
    tables = {}
    if isinstance(details.get("files"), list) and details["files"] and all(isinstance(r, dict) for r in details["files"]):
        keys = ("input", "status", "rows_in", "rows_out", "rows_scored", "rows_error", "seconds")
        tables["files"] = [{k: row.get(k) for k in keys} for row in details["files"]]
    if isinstance(details.get("per_class"), dict) and details["per_class"]:
        tables["per-class"] = [{"class": c, **(m if isinstance(m, dict) else {"value": m})}
                               for c, m in details["per_class"].items()]
    for name, rows in tables.items():
        try:
            create_table_artifact(rows, key=f"{stage}-{name}", description=f"{stage}: {name}")
        except Exception:
            pass


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # typed results, e.g. scoring's FileResult
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
