"""How the flow runs stages: retry backoff, timeouts, system metrics, continuing from the champion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect import flow, task

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.flowconfig import FlowConfig
from bertflow.tasks import stages as stage_tasks
from bertflow.tasks import tracking
from tests.helpers import TINY_OVERRIDES


def test_configured_gives_data_stages_backoff_and_training_stages_a_cap_without_retries():
    cfg = FlowConfig(retries=3, retry_delays_s=(1.0, 4.0), retry_jitter=0.5,
                     data_stage_timeout_minutes=2, train_stage_timeout_minutes=30)
    ingest = stage_tasks.configured(stage_tasks.ingest, cfg)
    assert ingest.retries == 3 and ingest.retry_delay_seconds == [1.0, 4.0, 4.0]
    assert ingest.retry_jitter_factor == 0.5 and ingest.timeout_seconds == 120
    pretrain = stage_tasks.configured(stage_tasks.pretrain, cfg)
    assert pretrain.retries == 0 and pretrain.timeout_seconds == 1800


def test_flow_config_rejects_bad_values_naming_the_key():
    from bertflow.bert_core.config import load_config
    from bertflow.bert_core.errors import ConfigError

    with pytest.raises(ConfigError, match="flow.retries"):
        load_config(None, ["flow.retries=-1"])
    with pytest.raises(ConfigError, match="flow.retry_delays_s"):
        load_config(None, ["flow.retry_delays_s=[]"])
    assert load_config(None, ["flow.retry_delays_s=[1, 2]"]).flow.retry_delays_s == (1.0, 2.0)


def test_transient_errors_are_retried_user_errors_and_timeouts_are_not(prefect_harness):
    attempts: dict[str, int] = {}

    @task(name="ingest")  # named like a data stage, so configured() gives it the data-stage policy
    def flaky(kind: str) -> str:
        attempts[kind] = attempts.get(kind, 0) + 1
        if kind == "transient" and attempts[kind] == 1:
            raise OSError("connection reset by peer")
        if kind == "user":
            raise InputError("bad input")
        if kind == "slow":
            import time

            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
        return "ok"

    flaky = flaky.with_options(retry_condition_fn=stage_tasks._retry_unless_user_error)
    cfg = FlowConfig(retries=2, retry_delays_s=(0.0,), data_stage_timeout_minutes=0.01)  # 0.6 s

    @flow
    def run(kind: str):
        return stage_tasks.configured(flaky, cfg)(kind)

    assert run("transient") == "ok" and attempts["transient"] == 2
    with pytest.raises(InputError):
        run("user")
    assert attempts["user"] == 1
    with pytest.raises(TimeoutError):
        run("slow")
    assert attempts["slow"] == 1


@pytest.mark.slow
def test_stage_runs_carry_system_metrics(tiny_pipeline):
    ws, summary = tiny_pipeline
    client = tracking.client(summary.tracking_uri)
    run = client.get_run(summary.stages["pretrain"].run_id)
    keys = set(run.data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, sorted(keys)
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100


@pytest.mark.slow
def test_nightly_continues_pretraining_from_the_champion_with_its_vocabulary(prefect_harness, tmp_path):
    """Night 1: no champion, pretrain from scratch, promote and snapshot the base. Night 2: continue from it."""
    from bertflow.api import run_pipeline
    from bertflow.tasks.champion import BASE_TAG

    ws = tmp_path / "ws"
    nightly = [*TINY_OVERRIDES, "flow.continue_from_champion=true", "finetune.epochs=1"]
    stages = ["ingest", "vocab", "mask", "pretrain", "finetune"]
    night1 = run_pipeline("tiny", workspace=ws, overrides=nightly, stages=stages)
    night2 = run_pipeline("tiny", workspace=ws, overrides=[*nightly, "pretrain.max_steps=20"], stages=stages)

    client = tracking.client(night1.tracking_uri)
    assert client.get_run(night1.parent_run_id).data.tags["bertflow.continued_from"] == "none"
    reg1 = night1.stages["finetune"].registry
    assert reg1.promoted, reg1
    base = Path(client.get_model_version(reg1.name, reg1.version).tags[BASE_TAG])
    assert base == Path(reg1.pretrain_base) and base.is_relative_to(ws / "champions")
    assert (base / "model.safetensors").is_file() and (base / "vocab.txt").is_file()

    parent2 = client.get_run(night2.parent_run_id)
    assert parent2.data.tags["bertflow.continued_from"] == f"{reg1.name} v{reg1.version}"
    assert parent2.data.params["pretrain.init_from"] == str(base)
    vocab2 = night2.stages["vocab"]
    assert vocab2.details["frozen_from"] == str(base) and vocab2.metrics["frozen"] == 1.0
    assert (ws / "vocab" / "vocab.txt").read_bytes() == (base / "vocab.txt").read_bytes()
    assert night2.stages["ingest"].reused
    pre2 = night2.stages["pretrain"]
    assert pre2.details["init_report"] and not pre2.reused
    assert (ws / "pretrain.previous").is_dir()  # night 1's training set aside, not mixed in
    reg2 = night2.stages["finetune"].registry
    assert reg2.version != reg1.version and reg2.candidate_score is not None
    champion = client.get_model_version_by_alias(reg1.name, "champion")
    assert str(champion.version) == (reg2.version if reg2.promoted else reg1.version)


def test_configuring_one_workspace_does_not_leak_its_store_to_the_next(tmp_path, monkeypatch):
    """A served process runs many flows: each workspace keeps its own MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.configure(tmp_path / "a")
    second = tracking.configure(tmp_path / "b")
    assert first.endswith("/a/mlflow.db") and second.endswith("/b/mlflow.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/shared.db")  # a user's explicit choice wins
    assert tracking.configure(tmp_path / "c") == "sqlite:////srv/shared.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////srv/shared.db"


@pytest.mark.slow
def test_pretrain_resumes_across_runtime_knobs_and_upgrades_and_restarts_when_the_maths_change(
        prefect_harness, tmp_path, monkeypatch, one_torch_thread):
    """One resume rule through the flow: a log interval or a new bertflow never throws training away; an LR does."""
    from bertflow.api import run_pipeline
    from bertflow.tasks import reuse

    _real = reuse.code_version
    ws = tmp_path / "ws"
    base = ["pretrain.max_steps=4", "pretrain.checkpoint_every=2", "pretrain.batch_size=8", "pretrain.warmup_steps=1"]

    def checkpoints(run: str = "pretrain") -> dict[str, bytes]:
        return {p.parent.name: p.read_bytes() for p in sorted((ws / run / "checkpoints").glob("*/model.safetensors"))}

    stages = ["ingest", "vocab", "mask", "pretrain"]
    first = run_pipeline("tiny", workspace=ws, overrides=base, stages=stages)
    trained = checkpoints()
    real_version = reuse.code_version("pretrain")
    # A new bertflow whose pretraining code changed: only that stage's key moves (see tasks.reuse.STAGE_VERSIONS).
    monkeypatch.setattr(reuse, "code_version", lambda stage: "upgraded" if stage == "pretrain" else _real(stage))
    again = run_pipeline("tiny", workspace=ws, overrides=[*base, "pretrain.log_every=3"], stages=stages)
    kept, set_aside = checkpoints(), (ws / "pretrain.previous").exists()
    other_lr = run_pipeline("tiny", workspace=ws, overrides=[*base, "pretrain.lr=0.002"], stages=["pretrain"])

    assert real_version != "upgraded" and list(trained) == ["step-0000002", "step-0000004"]
    assert not first.stages["pretrain"].reused and "resumed_from_step" not in first.stages["pretrain"].details
    assert all(again.stages[s].reused for s in ("ingest", "vocab", "mask"))  # the data stages did not change
    resumed = again.stages["pretrain"]
    assert not resumed.reused  # the stage ran (its key moved with its code)...
    assert resumed.details["resumed_from_step"] == 4 and resumed.metrics["steps"] == 4  # ...and kept its training
    assert not set_aside
    assert kept == trained  # the same checkpoints, not retrained
    assert resumed.metrics["final_loss"] == first.stages["pretrain"].metrics["final_loss"]

    restarted = other_lr.stages["pretrain"]
    assert "resumed_from_step" not in restarted.details and restarted.metrics["steps"] == 4
    assert (ws / "pretrain.previous").is_dir()
    assert checkpoints("pretrain.previous") == trained
    assert checkpoints() != trained
    assert json.loads((ws / "pretrain" / "run.json").read_text())["identity"]["config"]["lr"] == 0.002
