"""The Optuna side of a sweep: the study kept in the workspace, its sampler and pruner, resuming after a kill.

The study lives in ``<workspace>/sweep/<name>/optuna.db`` (Optuna's RDB storage on SQLite) under a
name derived from what its trials depend on (:func:`study_key`): the space, the fine-tuning config
but for its runtime knobs, and the content of the base model and the data. So a killed sweep
resumes with the trials it has, a finished one is reused as it is, and a changed space or config
starts a study of its own beside the old one.

Trials that count towards the requested number are the complete, pruned and failed ones; a trial
that was running when the sweep was killed is marked failed and *interrupted* (it does not count)
and its values are queued again, so the rerun tries them first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.sweep.space import PrunerSpec, SweepSpace
from bertflow.tasks import reuse

STUDY_VERSION = 1  # bump when a trial's result changes for the same space, config and inputs
# Keys that change how fast a trial runs or where it is logged, not what it learns.
RUNTIME_KEYS = frozenset({"num_threads", "device", "log_every", "eval_batch_size", "registered_model_name"})
STATE_ATTR = "bertflow.state"  # trial user attr: "interrupted" for a trial the kill of its sweep cut short
INTERRUPTED = "interrupted"
RUN_ATTR = "bertflow.mlflow_run_id"  # trial user attr: its nested MLflow run
RESULT_ATTR = "bertflow.result"  # trial user attr: output dir, metrics and eval-set digest of a complete trial
ERROR_ATTR = "bertflow.error"
RETRY_ATTR = "bertflow.retry_of"
PARENT_ATTR = "bertflow.parent_run_id"  # study user attr: the sweep's MLflow parent run
REGISTRATION_ATTR = "bertflow.registration"  # study user attr: the best trial's registered model version


def study_key(space: SweepSpace, cfg: FinetuneConfig, base_model_dir: str) -> str:
    """What the trials' results depend on: space, config (runtime knobs aside) and input content."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}
    inputs = {"base_model": cfg.base_model or base_model_dir, "train": cfg.train_path, "valid": cfg.valid_path}
    fingerprints = {name: [f for _, f in pairs] for name, pairs in reuse.input_fingerprints(inputs).items()}
    body = {"space": to_dict(space), "config": config, "inputs": fingerprints, "version": STUDY_VERSION}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def storage(db: str | Path) -> optuna.storages.RDBStorage:
    """Optuna's SQLite storage at ``db``; parallel trials wait for the lock rather than fail on it."""
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{Path(db).resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def open_study(db: str | Path, name: str, space: SweepSpace) -> optuna.Study:
    """Create or load the study ``name`` (maximising the validation metric) with the space's sampler and pruner.

    The sampler's seed is offset by the trials already in the study: a resumed sweep does not
    propose its first random trials again.
    """
    store = storage(db)
    try:
        done = len(optuna.load_study(study_name=name, storage=store).trials)
    except KeyError:
        done = 0
    sampler = optuna.samplers.TPESampler(seed=space.sampler.seed + done,
                                         n_startup_trials=space.sampler.startup_trials)
    return optuna.create_study(storage=store, study_name=name, direction="maximize", sampler=sampler,
                               pruner=pruner(space.pruner), load_if_exists=True)


def load_for_trial(db: str | Path, name: str, spec: PrunerSpec) -> optuna.Study:
    """The study as a trial's worker sees it: for reporting epochs and asking the pruner."""
    return optuna.load_study(study_name=name, storage=storage(db), pruner=pruner(spec))


def pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``spec`` names; epochs are its steps."""
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.min_epochs)
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs, max_resource="auto",
                                              reduction_factor=spec.reduction_factor)
    if spec.kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, n_warmup_steps=spec.min_epochs)
    return optuna.pruners.NopPruner()


def distributions(space: SweepSpace) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each swept key."""
    out: dict[str, BaseDistribution] = {}
    for key, p in space.params.items():
        if p.type == "categorical":
            out[key] = CategoricalDistribution(list(p.choices or ()))
        elif p.type == "int":
            out[key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[key] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return out


def trial_by_id(study: optuna.Study, trial_id: int) -> optuna.trial.Trial:
    """A live handle on a running trial (Optuna hands these out only from ``ask``)."""
    return optuna.trial.Trial(study, trial_id)


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the requested number (an interrupted one does not)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(STATE_ATTR) != INTERRUPTED


def counted(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if counts(t)]


def recover_interrupted(study: optuna.Study) -> list[FrozenTrial]:
    """Trials left running by a killed sweep: mark them failed and interrupted, queue their values again.

    Only called while the workspace lock is held, so no other sweep can be running them.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        trial_by_id(study, t._trial_id).set_user_attr(STATE_ATTR, INTERRUPTED)
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:  # none yet: killed while the sampler was drawing them
            study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number})
    return list(stale)


def epochs_trained(trial: FrozenTrial) -> int:
    """Epochs a trial trained: one validation report per epoch (a pruned or interrupted one's too)."""
    return len(trial.intermediate_values)


def max_epochs(space: SweepSpace, cfg: FinetuneConfig) -> int:
    """The most epochs a trial of ``space`` may train (the space's bound on finetune.epochs, else the config's)."""
    spec = space.params.get("finetune.epochs")
    if spec is None:
        return cfg.epochs
    return int(max(spec.values_to_check()))


def fits_budget(study: optuna.Study, budget_epochs: float | None, running_epochs: int, next_epochs: int) -> bool:
    """Whether a trial of ``next_epochs`` more can start: the finished trials' epochs, plus what the running ones
    may still train (``running_epochs``, their configs' epochs), plus it, stay within ``budget_epochs``."""
    if budget_epochs is None:
        return True
    done = sum(epochs_trained(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING)
    return done + running_epochs + next_epochs <= budget_epochs


def state_name(trial: FrozenTrial) -> str:
    """complete, pruned, failed, interrupted or running: the word MLflow tags and tables show."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get(STATE_ATTR) == INTERRUPTED:
        return INTERRUPTED
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
        trial.state, trial.state.name.lower())


def jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
