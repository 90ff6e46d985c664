"""The ``sweep`` flow: an Optuna study over fine-tuning settings, its trials as Prefect tasks, compared in MLflow.

    bertflow sweep -c tiny --space tiny --trials 8 --parallel 2

``parallel`` trials run at once (threads here, sharing the cores, or Ray workers with
``runner="ray"``); TPE proposes each trial's values from the space and the space's pruner stops
poor trials after an epoch. The study lives in ``<workspace>/sweep/<name>/optuna.db``: a killed
sweep resumes with the trials it has and a finished one is reused (``tasks.sweep_study``).
One MLflow parent run per sweep, one nested run per trial (``tasks.sweep_report``). The best
complete trial's model is registered as `candidate` and promoted by the same rule as any
fine-tuned model (``tasks.models.register_finetuned``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.context import get_run_context
from prefect.futures import as_completed

from bertflow.bert_core.config import PipelineConfig
from bertflow.bert_core.configtools import evolve
from bertflow.bert_core.errors import BertflowError, InputError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.sweep.space import SweepSpace
from bertflow.flows.workspace import Workspace, resolve
from bertflow.tasks import sweep_report, sweep_study, tracking
from bertflow.tasks.stage_runner import Registration, StageRun, TrackingContext
from bertflow.tasks.sweep_plots import write_plots
from bertflow.tasks.sweep_trial import (TrialOutcome, TrialSpec, failed_before_start, sweep_trial, threads_per_trial,
                                        trial_runner, warm_up)

Runner = Literal["local", "ray"]


@dataclass(frozen=True)
class TrialSummary:
    """One trial of the study, as the result, the CLI table and the Prefect table show it."""

    number: int
    state: str  # complete, pruned, failed, interrupted (cut short by a kill; its values were tried again)
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    seconds: float | None = None
    error: str | None = None
    epochs: int = 0  # epochs it trained (a pruned trial's until it was stopped)


@dataclass(frozen=True)
class SweepResult:
    """One sweep flow run: the study, its trials, the best one and where its model was registered."""

    workspace: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    mlflow_run_url: str
    study_name: str
    study_db: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    registration: Registration | None = None
    new_trials: int = 0  # trials this call ran (0: the study already had the requested number)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    @property
    def epochs_trained(self) -> int:
        """The study's compute: epochs of training over all its trials (interrupted ones' too)."""
        return sum(t.epochs for t in self.trials)


@flow(name="sweep", validate_parameters=True)
def sweep(
    space: SweepSpace,
    config: PipelineConfig = PipelineConfig(),
    trials: int = 20,
    parallel: int = 1,
    runner: Runner = "local",
    ray_address: str | None = None,
    workspace: str | None = None,
    name: str | None = None,
    budget_epochs: float | None = None,
) -> SweepResult:
    """Search fine-tuning settings with Optuna and register the best trial's model as `candidate`.

    Args:
        space: the finetune.* keys to search and how (float/int ranges, choices), the sampler and the pruner.
        config: the pipeline config; its finetune section is every trial's starting point.
        trials: how many trials the study ends with (complete, pruned or failed), counting earlier runs'.
        parallel: trials at once; they share this machine's cores (finetune.num_threads each, unless set).
        runner: local (threads in this process) or ray (prefect-ray; a local Ray unless ray_address).
        ray_address: the Ray cluster for runner ray (its workers must see the workspace).
        workspace: where the study, trial outputs and the MLflow store go; default `$BERTFLOW_WORKSPACE` or `./workspace`.
        name: the sweep's folder under `<workspace>/sweep/`; default the config's name.
        budget_epochs: a compute budget: no trial starts unless the study's epochs of training (all trials, each
            counted at the most epochs it may train) stay within it, so the study may end with fewer trials;
            none: no budget.
    """
    check_counts(trials, parallel, budget_epochs)
    ws = Workspace(resolve(workspace)).ensure()
    with ws.locked():
        return _run(config, space, trials, parallel, runner, ray_address, ws, name or config.name, budget_epochs)


def check_counts(trials: int, parallel: int, budget_epochs: float | None = None) -> None:
    if trials < 1:
        raise InputError(f"--trials must be at least 1 (got {trials})")
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1 (got {parallel})")
    if budget_epochs is not None and budget_epochs <= 0:
        raise InputError(f"--budget-epochs must be positive (got {budget_epochs})")


@dataclass
class _Sweep:
    """What every step of one sweep run needs."""

    cfg: PipelineConfig
    space: SweepSpace
    budget_epochs: float | None
    study: optuna.Study
    study_name: str
    db: Path
    trial_root: Path
    base_model: str
    ctx: TrackingContext


def _run(cfg: PipelineConfig, space: SweepSpace, trials: int, parallel: int, runner: str, ray_address: str | None,
         ws: Workspace, name: str, budget_epochs: float | None) -> SweepResult:
    logger = get_run_logger()
    t0 = time.perf_counter()
    uri = tracking.configure(ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.name, ws.root)
    base_model = cfg.finetune.base_model or _need(ws.pretrain / "export")
    key = sweep_study.study_key(space, cfg.finetune, base_model)
    folder = ws.sweep_dir(name)
    study_name = f"{folder.name}-{key[:10]}"
    db = folder / "optuna.db"
    study = sweep_study.open_study(db, study_name, space)
    interrupted = sweep_study.recover_interrupted(study)
    for t in interrupted:
        logger.warning("trial %d was cut short when the sweep was killed: its values are tried again", t.number)
    sweep_report.mark_interrupted(uri, exp_id, study_name, [t.user_attrs.get(sweep_study.RUN_ATTR) for t in interrupted])

    todo = trials - len(sweep_study.counted(study))
    spent = not sweep_study.fits_budget(study, budget_epochs, 0, sweep_study.max_epochs(space, cfg.finetune))
    stored_parent = study.user_attrs.get(sweep_study.PARENT_ATTR)
    flow_run = get_run_context().flow_run
    if (todo <= 0 or spent) and _finished(uri, stored_parent):
        logger.info("sweep %s: the study already has %d trials (%d asked for%s): nothing to run", study_name,
                    len(sweep_study.counted(study)), trials, "; its budget is spent" if spent else "")
        return _result(ws, uri, exp_id, stored_parent, study, study_name, db, new_trials=0)

    parent, resumed = sweep_report.parent_run(
        uri, exp_id, study_name, stored_parent,
        tags={"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": flow_run.name,
              "bertflow.config_name": cfg.name},
        params={**cfg.as_dict(), "space": space.model_dump(mode="json")})
    tracking.set_tags(uri, parent, {"bertflow.sweep_trials": str(trials), "bertflow.sweep_parallel": str(parallel),
                                    "bertflow.sweep_runner": runner, "bertflow.study_db": str(db),
                                    "bertflow.sweep_budget_epochs": str(budget_epochs)})
    if not resumed:
        study.set_user_attr(sweep_study.PARENT_ATTR, parent)
        tracking.log_dict(uri, parent, cfg.as_dict(), "config.yaml")
        tracking.log_dict(uri, parent, space.model_dump(mode="json"), "space.yaml")
    _link(tracking.run_url(uri, exp_id, parent))
    run = _Sweep(cfg, space, budget_epochs, study, study_name, db, folder / key[:10], base_model,
                 TrackingContext(uri, exp_id, parent, str(ws.root), str(flow_run.id)))
    logger.info("sweep %s: %d trials to run (%d in the study), %d at once on %s", study_name, max(todo, 0),
                len(study.trials), parallel, runner)
    try:
        ran = _run_trials(run, max(todo, 0), parallel, runner, ray_address)
        registration = _register_best(run)
        plots = write_plots(study, run.trial_root / "plots")
    except BaseException:
        tracking.end_run(uri, parent, failed=True)
        raise
    result = _result(ws, uri, exp_id, parent, study, study_name, db, new_trials=ran, registration=registration)
    counts = {s: result.count(s) for s in ("complete", "pruned", "failed", "interrupted")}
    metrics = {**{f"trials_{s}": n for s, n in counts.items()}, "epochs_trained": result.epochs_trained,
               "sweep_seconds": time.perf_counter() - t0}
    best = asdict(result.best) if result.best else None
    sweep_report.finish_parent(uri, parent, best, metrics, plots, final=True)
    sweep_report.trial_table([asdict(t) for t in result.trials])
    logger.info("sweep %s finished: %s; best %s", study_name, ", ".join(f"{n} {s}" for s, n in counts.items() if n),
                f"trial {result.best.number} ({result.best.value:.4f})" if result.best else "none")
    return result


def _run_trials(run: _Sweep, todo: int, parallel: int, runner: str, ray_address: str | None) -> int:
    """Ask the study for ``todo`` trials, ``parallel`` in flight at a time; tell it each outcome."""
    dists = sweep_study.distributions(run.space)
    base = evolve(run.cfg.finetune, num_threads=threads_per_trial(run.cfg.finetune, parallel))
    most = sweep_study.max_epochs(run.space, run.cfg.finetune)
    inflight: dict[Any, tuple[optuna.trial.Trial, str, int]] = {}  # future -> trial, MLflow run, its epochs

    def another() -> bool:
        running = sum(epochs for _, _, epochs in inflight.values())
        return started < todo and sweep_study.fits_budget(run.study, run.budget_epochs, running, most)

    started = 0
    if not another():
        return 0
    if runner == "local" and parallel > 1:
        warm_up(run.base_model, run.cfg.finetune)  # trials in threads would race on lazy imports
    with trial_runner(runner, parallel, ray_address) as task_runner, _gpu_options(runner):
        while another() or inflight:
            while len(inflight) < parallel and another():
                trial = run.study.ask(dists)
                started += 1
                try:
                    cfg: FinetuneConfig | None = run.space.apply(base, trial.params)
                    problem = None
                except BertflowError as exc:  # e.g. text_column drawn equal to label_column
                    cfg, problem = None, exc
                run_id = sweep_report.start_trial(run.ctx.tracking_uri, run.ctx.experiment_id, run.ctx.parent_run_id,
                                                  run.study_name, trial.number, cfg, trial.params,
                                                  run.ctx.flow_run_id)
                trial.set_user_attr(sweep_study.RUN_ATTR, run_id)
                if cfg is None:
                    _record(run, trial, run_id, failed_before_start(trial.number, problem))
                    continue
                spec = TrialSpec(trial.number, trial._trial_id, cfg, run.base_model,
                                 str(run.trial_root / f"trial-{trial.number:04d}"), str(run.db), run.study_name,
                                 run.space.pruner)
                inflight[task_runner.submit(sweep_trial, parameters={"spec": spec})] = (trial, run_id, cfg.epochs)
            if inflight:
                future = next(as_completed(list(inflight)))
                trial, run_id, _ = inflight.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - the task itself died (e.g. a lost Ray worker)
                    outcome = TrialOutcome(trial.number, "failed", error=f"{type(exc).__name__}: {exc}")
                _record(run, trial, run_id, outcome)
    return started


def _record(run: _Sweep, trial: optuna.trial.Trial, run_id: str, outcome: TrialOutcome) -> None:
    """Log the trial to its MLflow run, then tell the study how it ended.

    In this order, a kill between the two leaves the trial running in the study, so the
    rerun marks it interrupted (its MLflow run too) and tries its values again.
    """
    sweep_report.finish_trial(run.ctx.tracking_uri, run_id, outcome)
    trial.set_user_attr("bertflow.seconds", outcome.seconds)
    if outcome.state == "complete":
        trial.set_user_attr(sweep_study.RESULT_ATTR, {"model_dir": outcome.model_dir, "metrics": outcome.metrics,
                                                      "eval_set_digest": outcome.eval_set_digest})
        run.study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        run.study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(sweep_study.ERROR_ATTR, (outcome.error or "")[:2000])
        run.study.tell(trial, state=TrialState.FAIL)
    value = f" {outcome.value:.4f}" if outcome.value is not None else ""
    get_run_logger().info("trial %d %s%s in %.1fs%s", trial.number, outcome.state, value, outcome.seconds,
                          f": {outcome.error}" if outcome.error else "")


def _register_best(run: _Sweep) -> Registration | None:
    """Register the best complete trial's model as `candidate` (once per best trial), as fine-tuning does."""
    from bertflow.tasks.models import register_finetuned

    complete = run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        failed = [t for t in run.study.trials if sweep_study.state_name(t) == "failed"]
        if failed and len(failed) == len(sweep_study.counted(run.study)):
            raise InputError(f"sweep {run.study_name}: every trial failed; trial {failed[0].number}: "
                             f"{failed[0].user_attrs.get(sweep_study.ERROR_ATTR)}")
        get_run_logger().warning("sweep %s: no trial completed (all pruned?): nothing to register", run.study_name)
        return None
    best = run.study.best_trial
    stored = run.study.user_attrs.get(sweep_study.REGISTRATION_ATTR)
    if stored and stored.get("trial") == best.number:
        return Registration(**stored["registration"])
    result = best.user_attrs[sweep_study.RESULT_ATTR]
    summary = StageRun(stage="finetune", path=str(Path(result["model_dir"]).parent), metrics=result["metrics"],
                       details={"model_dir": result["model_dir"], "eval_set_digest": result["eval_set_digest"]},
                       run_id=best.user_attrs[sweep_study.RUN_ATTR], seconds=best.user_attrs.get("bertflow.seconds", 0.0),
                       reused=False, stage_key=run.study_name)
    registration = register_finetuned(run.ctx, run.space.apply(run.cfg.finetune, best.params), summary, run.base_model)
    run.study.set_user_attr(sweep_study.REGISTRATION_ATTR, {"trial": best.number, "registration": asdict(registration)})
    tracking.set_tags(run.ctx.tracking_uri, run.ctx.parent_run_id,
                      {"bertflow.registered": f"{registration.name} v{registration.version}"})
    return registration


def _result(ws: Workspace, uri: str, exp_id: str, parent: str, study: optuna.Study, study_name: str, db: Path,
            new_trials: int, registration: Registration | None = None) -> SweepResult:
    trials = [TrialSummary(t.number, sweep_study.state_name(t), t.value,
                           sweep_study.jsonable_params(t.params), t.user_attrs.get(sweep_study.RUN_ATTR),
                           t.user_attrs.get("bertflow.seconds"), t.user_attrs.get(sweep_study.ERROR_ATTR),
                           sweep_study.epochs_trained(t))
              for t in study.get_trials(deepcopy=False)]
    complete = [t for t in trials if t.state == "complete"]
    best = max(complete, key=lambda t: t.value) if complete else None
    if registration is None and best is not None:
        stored = study.user_attrs.get(sweep_study.REGISTRATION_ATTR)
        if stored and stored.get("trial") == best.number:
            registration = Registration(**stored["registration"])
    return SweepResult(workspace=str(ws.root), tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent,
                       mlflow_run_url=tracking.run_url(uri, exp_id, parent), study_name=study_name, study_db=str(db),
                       trials=trials, best=best, registration=registration, new_trials=new_trials)


def _finished(uri: str, parent_id: str | None) -> bool:
    if not parent_id:
        return False
    try:
        return tracking.client(uri).get_run(parent_id).data.tags.get(sweep_report.FINISHED_TAG) == "true"
    except Exception:  # noqa: BLE001 - a run that cannot be read is not finished
        return False


def _gpu_options(runner: str):
    if runner == "ray":
        from bertflow.tasks.score_files import gpu_options

        return gpu_options()
    return contextlib.nullcontext()


def _need(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path} does not exist: set finetune.base_model or run the 'pretrain' stage first")
    return str(path)


def _link(url: str) -> None:
    try:
        create_link_artifact(url, link_text="MLflow run: sweep", key="mlflow-sweep")
    except Exception:  # artifacts are a convenience
        pass
