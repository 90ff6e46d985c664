"""The Python API: the pipeline and bulk scoring from a notebook or another orchestrator.

Each call runs the same Prefect flow as the ``bertflow`` CLI (Prefect's ephemeral API
unless ``PREFECT_API_URL`` is set; MLflow on ``<workspace>/mlflow.db`` unless
``MLFLOW_TRACKING_URI`` is set) and returns typed results, never data::

    import bertflow

    run = bertflow.run_pipeline("tiny", workspace="ws", overrides=["pretrain.max_steps=50"])
    run.stages["finetune"].registry.version          # the registered model version
    scored = bertflow.score("lake/", "models:/bertflow-tiny-books@champion", output="scored/", batch_size=128)
    scored.metrics["rows_scored"]
    student = bertflow.distill("models:/bertflow-tiny-books@champion", "tiny", workspace="ws", student_layers=1)
    found = bertflow.sweep("tiny", "tiny", workspace="ws", trials=8, parallel=2)  # search space, preset
    found.best.params, found.registration.version      # the best trial's values, its registered model

User mistakes (a bad key, a missing input) raise :class:`bertflow.bert_core.errors.BertflowError`
subclasses whose message names what is wrong, before any work starts where they can be seen early.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bertflow.bert_core.config import PipelineConfig, load_config
from bertflow.bert_core.configtools import apply_overrides, evolve, from_dict, to_dict
from bertflow.flows.pipeline import PipelineResult, check_stages, pipeline
from bertflow.flows.workspace import Workspace, resolve
from bertflow.tasks.progress import ProgressOptions
from bertflow.tasks.stage_runner import StageRun

if TYPE_CHECKING:  # the sweep flow imports Optuna: loaded when a sweep runs
    from bertflow.bert_core.sweep.space import SweepSpace
    from bertflow.flows.sweep import SweepResult

__all__ = ["run_pipeline", "score", "distill", "sweep", "resolve_config", "PipelineResult", "StageRun", "ProgressOptions"]

ConfigLike = str | os.PathLike | PipelineConfig | Mapping[str, Any] | None
"""A preset name (``"tiny"``), a YAML file, a :class:`PipelineConfig`, a plain mapping, or None (the defaults)."""


def resolve_config(config: ConfigLike = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The validated config for ``config`` with ``section.key=value`` overrides applied (values parsed as YAML)."""
    if isinstance(config, PipelineConfig):
        return from_dict(PipelineConfig, apply_overrides(to_dict(config), list(overrides))) if overrides else config
    if isinstance(config, Mapping):
        return from_dict(PipelineConfig, apply_overrides(dict(config), list(overrides)))
    return load_config(config, list(overrides))


def run_pipeline(config: ConfigLike = None, *, stages: Sequence[str] | None = None,
                 workspace: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 run_name: str | None = None, progress: ProgressOptions | None = None) -> PipelineResult:
    """Run ``stages`` (default: all six, always in pipeline order) on ``workspace``; returns what each stage did.

    Stages whose inputs, config and code are unchanged are reused, not recomputed
    (``result.stages[name].reused``); ``<workspace>/last_run.json`` holds the same summary.
    ``run_name`` names the MLflow parent run (default: the config's name and the time);
    ``progress`` says how stages show progress (``ProgressOptions(quiet=True)``, ``log_interval_s=...``).
    """
    cfg = resolve_config(config, overrides)
    chosen = check_stages(list(stages) if stages else None)  # a typo fails here, before Prefect starts
    root = Workspace(resolve(workspace)).ensure().root
    return pipeline(config=cfg, workspace=str(root), stages=chosen, run_name=run_name,
                    progress=progress or ProgressOptions())


def score(input: str | os.PathLike, model: str | os.PathLike, output: str | os.PathLike | None = None, *,
          config: ConfigLike = None, workspace: str | os.PathLike | None = None, overrides: Sequence[str] = (),
          run_name: str | None = None, progress: ProgressOptions | None = None, **settings: Any) -> StageRun:
    """Score the Parquet lake ``input`` with ``model`` into ``output``, exactly once; returns the score stage's run.

    ``model`` is a ``models:/name@alias`` or ``runs:/`` URI, or a local Hugging Face
    directory. ``input`` and ``output`` are local paths or object-store URIs (``s3://bucket/lake/``).
    ``output`` defaults to ``<workspace>/score/<job>`` (``job=`` or a name derived from the
    input). ``settings`` are keys of the ``score`` section (``batch_size=128``,
    ``where="dt >= '2026-11-02' AND lang = 'en'"``, ``overwrite=True``, ``runner="ray"``, ...);
    ``config``, ``overrides``, ``run_name`` and ``progress`` are as for :func:`run_pipeline`.
    A rerun skips the files already scored with the same input, model and settings.
    """
    cfg = resolve_config(config, overrides)
    chosen = {"input": os.fspath(input), "model_uri": os.fspath(model), **settings}
    if output is not None:
        chosen["output"] = os.fspath(output)
    cfg = evolve(cfg, score=evolve(cfg.score, **chosen))
    return run_pipeline(cfg, stages=["score"], workspace=workspace, run_name=run_name,
                        progress=progress).stages["score"]


def distill(teacher: str | os.PathLike | None = None, config: ConfigLike = None, *,
            workspace: str | os.PathLike | None = None, overrides: Sequence[str] = (), run_name: str | None = None,
            progress: ProgressOptions | None = None, **settings: Any) -> StageRun:
    """Distill ``teacher`` (a ``models:/`` or ``runs:/`` URI or a local directory; None: the workspace's
    fine-tuned model) into a smaller student trained on the config's fine-tune data; returns the distill
    stage's run (``.registry``: the student's registered version, tag ``distilled_from``).

    ``settings`` are keys of the ``distill`` section (``student_layers=3``, ``temperature=2.0``, ...).
    """
    cfg = resolve_config(config, overrides)
    chosen = {**settings, **({"teacher": os.fspath(teacher)} if teacher is not None else {})}
    if chosen:
        cfg = evolve(cfg, distill=evolve(cfg.distill, **chosen))
    return run_pipeline(cfg, stages=["distill"], workspace=workspace, run_name=run_name,
                        progress=progress).stages["distill"]


def sweep(space: "str | os.PathLike | SweepSpace | Mapping[str, Any]", config: ConfigLike = None, *, trials: int = 20,
          parallel: int = 1, runner: str = "local", ray_address: str | None = None,
          workspace: str | os.PathLike | None = None, overrides: Sequence[str] = (),
          name: str | None = None, budget_epochs: float | None = None) -> "SweepResult":
    """Search fine-tuning settings over ``space`` (a space file, a packaged space name such as ``"tiny"``,
    a :class:`SweepSpace` or a mapping) with ``trials`` trials, ``parallel`` at once.

    The study is kept in ``<workspace>/sweep/<name>/``: a killed sweep resumes, a finished
    one returns at once (``result.new_trials == 0``). ``budget_epochs`` caps the study's
    epochs of training (no trial starts that could pass it). The best trial's model is
    registered as `candidate` and promoted as any fine-tuned model is.
    """
    from bertflow.bert_core.sweep.space import SweepSpace, load_space
    from bertflow.flows.sweep import check_counts
    from bertflow.flows.sweep import sweep as sweep_flow

    if isinstance(space, SweepSpace):
        chosen = space
    elif isinstance(space, Mapping):
        chosen = from_dict(SweepSpace, space)
    else:
        chosen = load_space(space)
    cfg = resolve_config(config, overrides)
    check_counts(trials, parallel, budget_epochs)
    if runner not in ("local", "ray"):
        from bertflow.bert_core.errors import InputError

        raise InputError(f"--runner must be local or ray (got {runner!r})")
    root = Workspace(resolve(workspace)).ensure().root
    return sweep_flow(space=chosen, config=cfg, trials=trials, parallel=parallel, runner=runner,
                      ray_address=ray_address, workspace=str(root), name=name, budget_epochs=budget_epochs)
