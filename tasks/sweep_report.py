"""How a sweep shows up in MLflow and Prefect: a parent run, one nested run per trial, plots and a trial table.

Each trial run carries the trial's full fine-tuning config as params (the same names as a pipeline's
finetune run, so both compare in one view), its per-epoch validation curve (``valid_*`` metrics,
step = epoch; also ``train_loss``), its final metrics and its state (tag ``bertflow.trial_state``: complete, pruned,
failed, interrupted; run status FINISHED, KILLED or FAILED). The parent run carries the best
trial's values (``best.<key>`` params), its metric, and Optuna's plots under ``plots/``.
Only the flow's process writes here (trials on Ray workers return their results instead).
"""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.tasks import tracking
from bertflow.tasks.sweep_trial import TrialOutcome

SWEEP_TAG = "bertflow.sweep"  # on the parent and every trial run: the study's name
TRIAL_TAG = "bertflow.trial"
STATE_TAG = "bertflow.trial_state"
FINISHED_TAG = "bertflow.sweep_finished"
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "interrupted": "KILLED"}
MAX_TAG = 5000


def parent_run(uri: str, experiment_id: str, study_name: str, stored_id: str | None, tags: dict[str, str],
               params: dict[str, Any]) -> tuple[str, bool]:
    """The sweep's parent run: the stored one while its sweep is unfinished (reopened), else a new one.

    Returns ``(run_id, resumed)``. A finished sweep's parent keeps its best params (MLflow params
    cannot change), so more trials on a finished study get a parent run of their own.
    """
    c = tracking.client(uri)
    if stored_id:
        try:
            run = c.get_run(stored_id)
        except MlflowException:
            run = None
        if run is not None and run.data.tags.get(FINISHED_TAG) != "true":
            c.update_run(stored_id, status="RUNNING")
            return stored_id, True
    run_id = tracking.start_run(uri, experiment_id, run_name=f"sweep {study_name}",
                                tags={SWEEP_TAG: study_name, **tags})
    tracking.log_params(uri, run_id, params)
    return run_id, False


def start_trial(uri: str, experiment_id: str, parent_id: str, study_name: str, number: int,
                cfg: FinetuneConfig | None, values: dict[str, Any], flow_run_id: str) -> str:
    """A nested run for trial ``number``: its full config as params (the drawn values alone if invalid)."""
    run_id = tracking.start_run(
        uri, experiment_id, run_name=f"trial-{number}", parent_run_id=parent_id,
        tags={SWEEP_TAG: study_name, TRIAL_TAG: str(number), STATE_TAG: "running", "prefect.flow_run_id": flow_run_id,
              "bertflow.swept": ",".join(k.removeprefix("finetune.") for k in values)})
    tracking.log_params(uri, run_id, to_dict(cfg) if cfg is not None else
                        {k.removeprefix("finetune."): v for k, v in values.items()})
    return run_id


def finish_trial(uri: str, run_id: str, outcome: TrialOutcome) -> None:
    """The trial's curve (step = epoch), final metrics, state and run status."""
    c = tracking.client(uri)
    for record in outcome.curve:
        epoch = int(record["epoch"])
        tracking.log_metrics(uri, run_id, {k if k == "train_loss" else f"valid_{k}": v
                                           for k, v in record.items() if k != "epoch"}, step=epoch)
    final = {**outcome.metrics, "trial_seconds": outcome.seconds}
    if outcome.value is not None:
        final["eval_metric"] = outcome.value
    tracking.log_metrics(uri, run_id, final)
    tags = {STATE_TAG: outcome.state}
    if outcome.error:
        tags["bertflow.error"] = outcome.error[:MAX_TAG]
    if outcome.model_dir:
        tags["bertflow.output"] = outcome.model_dir
    tracking.set_tags(uri, run_id, tags)
    c.set_terminated(run_id, status=RUN_STATUS[outcome.state])


def mark_interrupted(uri: str, experiment_id: str, study_name: str, run_ids: list[str]) -> list[str]:
    """Trial runs a killed sweep cut short: KILLED and tagged interrupted (their values are tried again).

    ``run_ids``: the runs of the trials the study found interrupted; with them, every run of
    this study still tagged running (killed before the study knew of it). Called with the
    workspace lock held, so no trial of this study can be running now.
    """
    c = tracking.client(uri)
    running = c.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{study_name}' and "
                                                           f"tags.`{STATE_TAG}` = 'running'")
    stale = sorted({r.info.run_id for r in running} | {r for r in run_ids if r})
    for run_id in stale:
        try:
            tracking.set_tags(uri, run_id, {STATE_TAG: "interrupted"})
            c.set_terminated(run_id, status="KILLED")
        except MlflowException:  # the run is gone (deleted, another store): nothing to mark
            pass
    return stale


def finish_parent(uri: str, run_id: str, best: dict[str, Any] | None, metrics: dict[str, float], plots: list,
                  final: bool) -> None:
    """Best values as ``best.<key>`` params and its metric; the sweep's own ``metrics``; plots; FINISHED."""
    metrics = dict(metrics)
    tags = {}
    if best is not None:
        metrics["best_eval_metric"] = best["value"]
        tags = {"bertflow.best_trial": str(best["number"]), "bertflow.best_run_id": best.get("run_id") or ""}
        if final:
            tracking.log_params(uri, run_id, {f"best.{k.removeprefix('finetune.')}": v
                                              for k, v in best["params"].items()})
    tracking.log_metrics(uri, run_id, metrics)
    for path in plots:
        tracking.log_artifact(uri, run_id, path, "plots")
    if final:
        tags[FINISHED_TAG] = "true"
    tracking.set_tags(uri, run_id, tags)
    tracking.end_run(uri, run_id)


def trial_table(trials: list[dict[str, Any]]) -> None:
    """The trials as a Prefect table artifact on the flow run (number, state, metric, values, MLflow run)."""
    from prefect.artifacts import create_table_artifact

    rows = [{"trial": t["number"], "state": t["state"],
             "eval_metric": None if t["value"] is None else round(t["value"], 4),
             **{k.removeprefix("finetune."): v for k, v in t["params"].items()},
             "seconds": round(t["seconds"], 1) if t.get("seconds") else None,
             "mlflow_run": t.get("run_id"), "error": t.get("error")} for t in trials]
    try:
        create_table_artifact(rows, key="sweep-trials", description="bertflow sweep: every trial of the study")
    except Exception:  # artifacts are a convenience; never fail a sweep for one
        pass
