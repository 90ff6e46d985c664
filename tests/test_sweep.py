"""Hyper-parameter sweeps (issue #20): the space file's checks, a tiny sweep's MLflow runs, pruning, a failing
trial, registration of the best, reuse of a finished study, and ``kill -9`` of a sweep then a rerun (on Ray).

Real Prefect (the session's test API), real MLflow on SQLite, real Optuna storage, a tiny BERT on the
bundled labelled sample. The tiny sweep (``tiny_sweep`` in conftest) draws, with its seed, one trial of
each state: complete, pruned (twice) and failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from bertflow.bert_core.configtools import from_dict
from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.sweep.space import SweepSpace, load_space
from bertflow.tasks import registry, tracking
from tests.helpers import REPO, TINY_SWEEP_SPACE, TINY_SWEEP_STATES, sweep_overrides

LR = {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}


# ------------------------------------------------------------------------------------------------ the space file


def test_packaged_space_loads_and_maps_to_finetune_keys():
    space = load_space("tiny")
    assert set(space.params) == {"finetune.lr", "finetune.batch_size", "finetune.epochs", "finetune.warmup_ratio"}
    from bertflow.bert_core.finetune.config import FinetuneConfig

    cfg = space.apply(FinetuneConfig(), {"finetune.lr": 0.002, "finetune.batch_size": 16})
    assert (cfg.lr, cfg.batch_size) == (0.002, 16)


@pytest.mark.parametrize("params, fragment", [
    ({"finetune.lrr": LR}, "unknown key 'finetune.lrr'"),
    ({"pretrain.lr": LR}, "unknown key 'pretrain.lr'"),
    ({"finetune.lr": {**LR, "low": 0.01, "high": 0.001}}, "params.finetune.lr: low (0.01) must be < high (0.001)"),
    ({"finetune.lr": {**LR, "low": 0.0}}, "params.finetune.lr: a log-scaled parameter needs low > 0"),
    ({"finetune.lr": {**LR, "type": "gauss"}}, "params.finetune.lr.type: 'gauss' is not one of"),
    ({"finetune.lr": {**LR, "lows": 1}}, "unknown config key 'params.finetune.lr.lows'"),
    ({"finetune.lr": {"type": "float", "low": 1e-4}}, "params.finetune.lr: a float parameter needs low and high"),
    ({"finetune.warmup_ratio": {"type": "float", "low": 0.0, "high": 1.5}}, "finetune.warmup_ratio: must be < 1"),
    ({"finetune.epochs": {"type": "float", "low": 1, "high": 3}}, "finetune.epochs: type float does not fit"),
    ({"finetune.epochs": {"type": "int", "low": 1, "high": 3.5}}, "an int parameter needs whole numbers"),
    ({"finetune.task": {"type": "categorical", "choices": ["sequence", "tokens"]}}, "'tokens' is not a valid value"),
    ({"finetune.batch_size": {"type": "categorical", "choices": []}}, "needs a non-empty list of choices"),
    ({}, "params: needs at least 1 item"),
])
def test_bad_space_is_one_clear_error_naming_the_key(params, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(SweepSpace, {"params": params})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_pruner_settings_are_named():
    with pytest.raises(ConfigError, match="pruner: kind threshold needs lower"):
        from_dict(SweepSpace, {"params": {"finetune.lr": LR}, "pruner": {"kind": "threshold"}})
    with pytest.raises(ConfigError, match="pruner.kind: 'hyper' is not one of"):
        from_dict(SweepSpace, {"params": {"finetune.lr": LR}, "pruner": {"kind": "hyper"}})


def test_cli_refuses_a_bad_space_file_before_anything_runs(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"finetune.lr": {**LR, "low": 0.1, "high": 0.01}}}))
    ws = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "bertflow", "sweep", "-c", "tiny", "--space", str(space),
                           "-w", str(ws)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(space) in errors[0] and "params.finetune.lr: low (0.1) must be < high" in errors[0]
    assert not ws.exists()


# ------------------------------------------------------------------------------------------------ a tiny sweep


def _runs(result):
    c = tracking.client(result.tracking_uri)
    children = c.search_runs([result.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    return c, c.get_run(result.parent_run_id), {int(r.data.tags["bertflow.trial"]): r for r in children}


def test_trials_are_nested_runs_with_params_curves_and_states(tiny_sweep):
    _, result = tiny_sweep
    c, parent, trials = _runs(result)
    assert [t.state for t in result.trials] == TINY_SWEEP_STATES
    assert sorted(trials) == [0, 1, 2, 3] and parent.info.status == "FINISHED"
    status = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    cores = len(os.sched_getaffinity(0))
    for summary in result.trials:
        run = trials[summary.number]
        assert run.info.run_name == f"trial-{summary.number}"
        assert run.data.tags["bertflow.trial_state"] == summary.state
        assert run.info.status == status[summary.state]
        assert float(run.data.params["lr"]) == pytest.approx(summary.params["finetune.lr"])
        assert run.data.params["epochs"] == str(summary.params["finetune.epochs"])
        assert run.data.params["num_threads"] == str(max(1, cores // 2))  # two trials share the cores
        curve = c.get_metric_history(run.info.run_id, "valid_eval_metric")
        if summary.state == "failed":
            assert curve == [] and "no_such_column" in run.data.tags["bertflow.error"]
            continue
        assert [m.step for m in curve] == list(range(1, len(curve) + 1))  # one point per epoch, step = epoch
        assert run.data.metrics["eval_metric"] == pytest.approx(summary.value)
        if summary.state == "pruned":  # the threshold pruner stops a trial at its second epoch
            assert len(curve) == 2 and summary.value == pytest.approx(curve[-1].value)
        else:
            assert len(curve) == summary.params["finetune.epochs"] and "accuracy" in run.data.metrics


def test_the_best_trial_is_registered_and_the_parent_carries_it(tiny_sweep):
    _, result = tiny_sweep
    c, parent, trials = _runs(result)
    complete = [t for t in result.trials if t.state == "complete"]
    assert result.best == max(complete, key=lambda t: t.value)
    reg = result.registration
    assert reg is not None and reg.name == "bertflow-tiny-books"
    candidate = registry.version_by_alias(c, reg.name, registry.CANDIDATE)
    assert str(candidate.version) == reg.version and candidate.run_id == result.best.run_id
    assert reg.promoted  # the first model of this registry: the promotion rule makes it the champion
    assert parent.data.metrics["best_eval_metric"] == pytest.approx(result.best.value)
    assert float(parent.data.params["best.lr"]) == pytest.approx(result.best.params["finetune.lr"])
    assert parent.data.tags["bertflow.best_trial"] == str(result.best.number)
    assert {parent.data.metrics[f"trials_{s}"] for s in ("complete", "pruned", "failed")} == {1, 2}
    plots = {a.path for a in c.list_artifacts(result.parent_run_id, "plots")}
    assert {"plots/parallel_coordinate.html", "plots/parallel_coordinate.png"} <= plots


def test_prefect_table_lists_the_trials(tiny_sweep):
    import json

    from prefect.artifacts import Artifact

    _, result = tiny_sweep
    table = Artifact.get("sweep-trials")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [(r["trial"], r["state"]) for r in rows] == [(t.number, t.state) for t in result.trials]


def test_rerunning_a_finished_sweep_reuses_its_study(tiny_sweep, tiny_bert_base):
    from bertflow.api import sweep

    ws, first = tiny_sweep
    again = sweep(TINY_SWEEP_SPACE, "tiny", trials=4, parallel=2, workspace=ws,
                  overrides=sweep_overrides(tiny_bert_base))
    assert again.new_trials == 0 and again.parent_run_id == first.parent_run_id
    assert again.trials == first.trials and again.registration == first.registration
    assert len(_runs(again)[2]) == 4


# ------------------------------------------------------------------------------------------------ kill -9


KILL_SPACE = {"params": {"finetune.lr": LR, "finetune.epochs": {"type": "categorical", "choices": [1, 2]}},
              "sampler": {"seed": 1, "startup_trials": 4}, "pruner": {"kind": "none"}}


def _trials_in(db) -> dict[int, tuple[str, str | None]]:
    """number -> (state, completion time), read straight from Optuna's tables (the sweep may be writing)."""
    if not db.is_file():
        return {}
    try:  # read-write: a reader may have to roll back what the killed writer left half done
        with contextlib.closing(sqlite3.connect(str(db), timeout=30)) as conn:
            return {n: (s, t) for n, s, t in conn.execute("SELECT number, state, datetime_complete FROM trials")}
    except sqlite3.OperationalError:  # its tables are not created yet
        return {}


@pytest.mark.slow
def test_kill_9_then_rerun_keeps_finished_trials_and_ends_with_the_requested_number(
        prefect_harness, tiny_bert_base, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from bertflow.api import sweep

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(KILL_SPACE))
    ws = tmp_path / "ws"
    sets = [arg for o in sweep_overrides(tiny_bert_base) for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "bertflow", "sweep", "-c", "tiny", "--space", str(space), "--trials", "4",
           "--parallel", "2", "-w", str(ws), *sets]
    db = ws / "sweep" / "bertflow-tiny" / "optuna.db"
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
        deadline = time.monotonic() + 300
        while proc.poll() is None and not any(s == "COMPLETE" for s, _ in _trials_in(db).values()):
            assert time.monotonic() < deadline, "no trial completed in 300 s"
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before the kill:\n{(tmp_path / 'sweep.log').read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    at_kill = _trials_in(db)
    done = {n: t for n, (s, t) in at_kill.items() if s == "COMPLETE"}
    cut = sorted(n for n, (s, _) in at_kill.items() if s == "RUNNING")
    assert done and len(done) < 4, at_kill

    # The rerun also exercises the Ray runner (a local 2-CPU Ray): same plan, trials in Ray workers.
    result = sweep(space, "tiny", trials=4, parallel=2, runner="ray", workspace=ws,
                   overrides=sweep_overrides(tiny_bert_base))
    after = _trials_in(db)
    assert {n: after[n][1] for n in done} == done  # finished trials were not rerun
    assert result.new_trials == 4 - len(done), (at_kill, result.trials)
    assert sum(t.state == "complete" for t in result.trials) == 4
    by_number = {t.number: t for t in result.trials}
    assert [n for n, t in by_number.items() if t.state == "interrupted"] == cut
    retried = [t for t in result.trials if t.number > max(at_kill)]
    for n in cut:  # an interrupted trial's values are tried again (unless it was killed before it had any)
        assert not by_number[n].params or by_number[n].params in [t.params for t in retried]

    c, parent, runs = _runs(result)
    assert parent.info.status == "FINISHED"  # one parent run: the killed sweep's, resumed
    assert parent.data.tags["bertflow.sweep_runner"] == "ray"
    states = sorted(r.data.tags["bertflow.trial_state"] for r in runs.values())
    # a trial asked in the last milliseconds before the kill may not have had its MLflow run yet
    assert states in (["complete"] * 4 + ["interrupted"] * k for k in (len(cut), len(cut) - 1))
    assert all(runs[n].info.status == "KILLED" for n in cut if n in runs)
    assert all(r.data.tags["bertflow.trial_state"] == "complete" for n, r in runs.items() if n not in cut)
    assert result.registration is not None

    again = sweep(space, "tiny", trials=4, parallel=2, workspace=ws, overrides=sweep_overrides(tiny_bert_base))
    assert again.new_trials == 0 and _trials_in(db) == after

    # More trials, within a compute budget: room for one trial of at most 2 epochs; after it (1 or 2 epochs
    # trained) no second one fits, whatever epochs the sampler draws.
    budget = again.epochs_trained + 2
    more = sweep(space, "tiny", trials=8, parallel=2, workspace=ws, overrides=sweep_overrides(tiny_bert_base),
                 budget_epochs=budget)
    assert more.new_trials == 1 and more.epochs_trained <= budget
    assert more.parent_run_id != result.parent_run_id  # a finished sweep's parent keeps its best; more get a new one

