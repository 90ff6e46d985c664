"""One sweep trial as a Prefect task: fine-tune with the drawn values, report each epoch, stop when pruned.

The task runs wherever the sweep's task runner puts it (a thread here, a Ray worker) and talks only
to the study's storage (epoch reports, the pruner's verdict) and to its own output directory: the
flow tells Optuna the outcome and logs the MLflow run, so one process writes the MLflow store.
A trial that fails returns a failed outcome instead of raising: one bad trial never fails the sweep.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.sweep.space import PrunerSpec

State = Literal["complete", "pruned", "failed"]


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs (small and picklable: it travels to Ray workers)."""

    number: int
    trial_id: int
    cfg: FinetuneConfig  # the base config with this trial's values applied
    base_model_dir: str
    out_dir: str
    study_db: str
    study_name: str
    pruner: PrunerSpec


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: its state, final metric and per-epoch validation curve."""

    number: int
    state: State
    value: float | None = None  # complete: the final validation metric; pruned: the last epoch's
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)  # one record per epoch: epoch, eval_metric, ...
    error: str | None = None
    seconds: float = 0.0
    model_dir: str | None = None
    eval_set_digest: str | None = None


def threads_per_trial(cfg: FinetuneConfig, parallel: int) -> int:
    """CPU threads for each of ``parallel`` trials, so that together they use the cores once over."""
    if cfg.num_threads:
        return cfg.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // parallel)


def trial_runner(runner: str, parallel: int, ray_address: str | None = None) -> TaskRunner:
    """Where trials run: ``parallel`` threads here, or a Ray (local, or the cluster at ``ray_address``)."""
    if runner == "ray":
        from bertflow.tasks.score_files import ray_runner

        return ray_runner(ray_address, num_cpus=parallel)
    return ThreadPoolTaskRunner(max_workers=parallel)


def warm_up(base_model_dir: str, cfg: FinetuneConfig) -> None:
    """Do, once and in this thread, the lazy imports a trial does: Hugging Face's are not thread-safe.

    Two trials starting together in threads of one process both import ``AutoTokenizer`` and
    the model class on first use, and one of them can fail with ``ImportError: cannot import
    name 'AutoTokenizer'``. Loading the tokenizer and building the model from its config once
    here (seconds at most) leaves nothing for them to race on. Bad inputs are left for the
    trials to report.
    """
    import bertflow.bert_core.finetune.stage  # noqa: F401 - the stage's own imports
    from bertflow.bert_core.finetune.model import load_tokenizer, quiet_transformers

    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

        load_tokenizer(base_model_dir)
        auto = AutoModelForTokenClassification if cfg.task == "token" else AutoModelForSequenceClassification
        with quiet_transformers():
            auto.from_config(AutoConfig.from_pretrained(base_model_dir, num_labels=2, trust_remote_code=False))
    except Exception:  # noqa: BLE001 - a bad base model fails each trial, with its own message
        pass


@task(name="sweep-trial", cache_policy=NO_CACHE, retries=0)
def sweep_trial(spec: TrialSpec) -> TrialOutcome:
    """Fine-tune one trial's config, reporting each epoch's validation metric to the study's pruner."""
    import optuna

    from bertflow.bert_core.finetune.stage import run
    from bertflow.tasks.sweep_study import load_for_trial, trial_by_id

    logger = get_run_logger()
    t0 = time.perf_counter()
    curve: list[dict[str, float]] = []
    try:
        trial = trial_by_id(load_for_trial(spec.study_db, spec.study_name, spec.pruner), spec.trial_id)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            curve.append({"epoch": float(epoch), **metrics})
            trial.report(metrics["eval_metric"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        result = run(spec.cfg, spec.base_model_dir, spec.out_dir, on_epoch=on_epoch)
    except optuna.TrialPruned as exc:
        logger.info("trial %d %s (validation metric %.4f)", spec.number, exc, curve[-1]["eval_metric"])
        return TrialOutcome(spec.number, "pruned", curve[-1]["eval_metric"], curve=curve,
                            seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result of the sweep, not its failure
        logger.warning("trial %d failed: %s: %s", spec.number, type(exc).__name__, exc)
        return TrialOutcome(spec.number, "failed", curve=curve, error=f"{type(exc).__name__}: {exc}",
                            seconds=time.perf_counter() - t0)
    return TrialOutcome(spec.number, "complete", float(result.metrics["eval_metric"]), metrics=dict(result.metrics),
                        curve=curve, seconds=time.perf_counter() - t0, model_dir=str(result.details["model_dir"]),
                        eval_set_digest=str(result.details.get("eval_set_digest", "")))


def failed_before_start(number: int, error: Exception) -> TrialOutcome:
    """The outcome of a trial whose drawn values do not make a valid config (it never reaches a worker)."""
    return TrialOutcome(number, "failed", error=f"{type(error).__name__}: {error}")
