"""The ``pipeline`` flow: ingest -> vocab -> mask -> pretrain -> finetune (-> distill) -> score.

Flow parameters are the user's knobs: the typed :class:`PipelineConfig` (so a
deployment's run form in the Prefect UI is a validated form with every key's
default and description), the workspace and which stages to run. The CLI and the
Python API build the config from a preset and ``--set`` overrides. One MLflow parent
run per flow run, one nested run per stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from bertflow.bert_core.config import ALL_STAGES, STAGES, PipelineConfig
from bertflow.bert_core.configtools import evolve
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.destination import default_output
from bertflow.flows.workspace import Workspace, resolve
from bertflow.tasks import champion, console, parent_run, reuse, tracking
from bertflow.tasks import stages as stage_tasks
from bertflow.tasks.progress import ProgressOptions
from bertflow.tasks.stage_runner import StageRun, TrackingContext


@dataclass(frozen=True)
class PipelineResult:
    """One pipeline flow run: its workspace, its MLflow parent run and each stage's :class:`StageRun`."""

    workspace: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    mlflow_run_url: str
    stages: dict[str, StageRun] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON written to ``<workspace>/last_run.json``."""
        return {**{k: getattr(self, k) for k in ("workspace", "tracking_uri", "experiment_id", "parent_run_id",
                                                   "mlflow_run_url")},
                "stages": {name: run.to_json() for name, run in self.stages.items()}}


Stage = Literal["ingest", "vocab", "mask", "pretrain", "finetune", "distill", "score"]


@flow(name="pipeline", validate_parameters=True)
def pipeline(
    config: PipelineConfig = PipelineConfig(),
    workspace: str | None = None,
    stages: list[Stage] | None = None,
    run_name: str | None = None,
    progress: ProgressOptions = ProgressOptions(),
) -> PipelineResult:
    """Run the chosen stages of bertflow on one workspace and return what each did.

    Args:
        config: every stage's settings (`bertflow config -c tiny` prints a preset's values).
        workspace: where outputs and the MLflow store go; default `$BERTFLOW_WORKSPACE` or `./workspace`.
        stages: a subset of ingest, vocab, mask, pretrain, finetune, distill, score (run in pipeline order);
            default the six main ones (distill runs only when named).
        run_name: the MLflow parent run's name; default the config's name and the start time.
        progress: how stages show progress: live in a terminal, else a log line every `log_interval_s` seconds.
    """
    chosen = check_stages(stages)
    ws = Workspace(resolve(workspace)).ensure()
    console.quiet_third_parties()
    with console.log_format(progress.log_format), ws.locked():
        return _run(config, chosen, ws, run_name, progress)


def check_stages(stages: list[str] | None) -> list[str]:
    """The chosen stages in pipeline order; an unknown name is an InputError listing the stages."""
    chosen = list(stages or STAGES)
    unknown = [s for s in chosen if s not in ALL_STAGES]
    if unknown:
        raise InputError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(ALL_STAGES)}")
    return [s for s in ALL_STAGES if s in chosen]


def _run(cfg: PipelineConfig, chosen: list[str], ws: Workspace, run_name: str | None,
         progress: ProgressOptions) -> PipelineResult:
    logger = get_run_logger()
    uri = tracking.configure(ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.name, ws.root)
    flow_run = get_run_context().flow_run
    parent = parent_run.start(uri, exp_id, cfg, chosen, flow_run, str(ws.root), run_name)
    ctx = TrackingContext(uri, exp_id, parent.run_id, str(ws.root), str(flow_run.id), progress)
    base = None
    if cfg.flow.continue_from_champion and "pretrain" in chosen:
        base, why = champion.find_base(uri, cfg.finetune.registered_model_name)
        logger.info("continue_from_champion: %s", why if base else f"{why}; pretraining from scratch")
        tracking.set_tags(uri, parent.run_id, {"bertflow.continued_from": f"{base.name} v{base.version}" if base else "none"})
        if base is not None:
            cfg = evolve(cfg, pretrain=evolve(cfg.pretrain, init_from=base.path))
    tracking.log_params(uri, parent.run_id, cfg.as_dict())
    tracking.log_dict(uri, parent.run_id, cfg.as_dict(), "config.yaml")
    results: dict[str, StageRun] = {}
    with tracking.run_scope(uri, parent.run_id), parent.recording(results):
        for stage in chosen:
            results[stage] = _run_one(stage, cfg, ws, ctx, base, results)
    summary = PipelineResult(workspace=str(ws.root), tracking_uri=uri, experiment_id=exp_id,
                             parent_run_id=parent.run_id, mlflow_run_url=tracking.run_url(uri, exp_id, parent.run_id),
                             stages=results)
    ws.last_run.write_text(json.dumps(summary.to_json(), indent=2, default=str))
    _publish_summary(summary)
    done = [f"{s} reused" if r.reused else f"{s} {r.seconds:.1f}s" for s, r in results.items()]
    logger.info("pipeline finished: %s", ", ".join(done))
    return summary


def _run_one(stage: str, cfg: PipelineConfig, ws: Workspace, ctx: TrackingContext,
             base: champion.ChampionBase | None, done: dict[str, StageRun] | None = None) -> StageRun:
    """Run one stage task with the configured retries and timeout; ``base``: continuing from the champion;
    ``done``: the stages this run already finished."""
    def task(t):
        return stage_tasks.configured(t, cfg.flow)

    if stage == "ingest":
        return task(stage_tasks.ingest)(ctx, cfg.ingest, str(ws.ingest))
    if stage == "vocab":
        if base is not None:  # continuing pretraining keeps the base model's token ids
            return task(stage_tasks.frozen_vocab)(ctx, base.path, str(ws.vocab))
        return task(stage_tasks.vocab)(ctx, cfg.vocab, _need(ws.ingest, "ingest"), str(ws.vocab))
    if stage == "mask":
        return task(stage_tasks.mask)(
            ctx, cfg.mask, _need(ws.ingest, "ingest"), _need(ws.vocab, "vocab"), str(ws.mask))
    if stage == "pretrain":
        return task(stage_tasks.pretrain)(
            ctx, cfg.pretrain, _need(ws.mask, "mask"), _need(ws.vocab, "vocab"), str(ws.pretrain)
        )
    if stage == "finetune":
        model_dir = cfg.finetune.base_model or _need(ws.pretrain / "export", "pretrain")
        return task(stage_tasks.finetune)(ctx, cfg.finetune, model_dir, str(ws.finetune))
    if stage == "distill":
        teacher = cfg.distill.teacher or _default_teacher(ws, (done or {}).get("finetune"))
        return task(stage_tasks.distill)(ctx, cfg.distill, cfg.finetune, teacher, str(ws.distill))
    if stage == "score":
        model = cfg.score.model_uri or _need(ws.finetune / "model", "finetune")
        out = cfg.score.output or default_output(ws.score, cfg.score)  # <workspace>/score/<job>
        return task(stage_tasks.score)(ctx, cfg.score, model, out)  # cfg.score.runner: where files run
    raise AssertionError(stage)


def _default_teacher(ws: Workspace, finetuned: StageRun | None) -> str:
    """The workspace's fine-tuned model: as its registry version (``models:/name/N``) when it was registered,
    so the student's ``distilled_from`` tag names that version, else its directory."""
    if finetuned is None:
        stored = reuse.load_any(str(ws.finetune))
        finetuned = StageRun.from_json(stored) if stored else None
    if finetuned is not None and finetuned.registry is not None:
        return f"models:/{finetuned.registry.name}/{finetuned.registry.version}"
    return _need(ws.finetune / "model", "finetune")


def _need(path: Path, producer: str) -> str:
    if not path.exists():
        raise InputError(f"{path} does not exist: run the '{producer}' stage first (or the whole pipeline)")
    return str(path)


def _publish_summary(summary: PipelineResult) -> None:
    """A markdown artifact on the flow run: stage durations, key numbers, MLflow links."""
    lines = [
        "# bertflow pipeline run",
        "",
        f"MLflow parent run: [{summary.parent_run_id}]({summary.mlflow_run_url})",
        "",
        *parent_run.stage_table(summary.stages, lambda run_id: tracking.run_url(summary.tracking_uri,
                                                                                 summary.experiment_id, run_id)),
        "",
        *[f"- {stage}: `{r.path}`" for stage, r in summary.stages.items()],
    ]
    try:
        create_markdown_artifact("\n".join(lines), key="pipeline-summary", description="bertflow pipeline summary")
    except Exception:
        pass

