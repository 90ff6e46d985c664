"""Real-client check of the deployments: a real `prefect server`, a process work pool, `prefect deploy`
from deployments/prefect.yaml, a triggered run, and a worker that executes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bertflow.bert_core.config import STAGES, PipelineConfig, load_config
from bertflow.bert_core.configtools import resolve_paths
from bertflow.bert_core.sweep.space import SweepSpace, load_space
from bertflow.deployments.serve import NIGHTLY_OVERRIDES
from bertflow.tasks import tracking
from tests.helpers import REPO, TINY_OVERRIDES, free_port, running

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"
    with running([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 f"{api}/health", env=env):
        yield api, {**env, "PREFECT_API_URL": api}


def prefect(args, env, timeout=180):
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_server_binds_loopback_only(prefect_server):
    api, _ = prefect_server
    assert api.startswith("http://127.0.0.1:")


def test_deploy_trigger_and_work_the_nightly_pipeline(prefect_server, tiny_pipeline, tmp_path):
    api, env = prefect_server
    ws, first = tiny_pipeline
    env = {**env, "BERTFLOW_HOME": str(REPO)}
    prefect(["work-pool", "create", "bertflow-process", "--type", "process"], env)
    out = prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    assert "nightly-pipeline" in out and "nightly-score" in out

    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    by_name = {d["name"]: d for d in deps}
    assert set(by_name) >= {"nightly-pipeline", "nightly-score"}
    sched = by_name["nightly-pipeline"]["schedules"][0]["schedule"]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "Europe/London"
    assert by_name["nightly-pipeline"]["work_pool_name"] == "bertflow-process"
    check_run_form(by_name["nightly-pipeline"]["parameter_openapi_schema"])
    nightly = PipelineConfig.model_validate(resolve_paths(
        PipelineConfig, by_name["nightly-pipeline"]["parameters"]["config"], REPO))  # the worker runs in REPO
    assert nightly == load_config("tiny", NIGHTLY_OVERRIDES)

    # Trigger the pipeline deployment on the workspace the tiny run already filled, with the tiny run's config:
    # every stage is reused, so this exercises deploy -> schedule -> worker -> flow run -> MLflow without retraining.
    params = json.dumps({"workspace": str(ws), "config": load_config("tiny", TINY_OVERRIDES).model_dump(mode="json")})
    out = prefect(["deployment", "run", "pipeline/nightly-pipeline", "--params", params], env)
    flow_run_id = next(tok for tok in out.replace("'", " ").split() if len(tok) == 36 and tok.count("-") == 4)

    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "bertflow-process", "--run-once"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    state = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()["state"]
    assert state["type"] == "COMPLETED", f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"

    client = tracking.client(first.tracking_uri)
    parents = client.search_runs([first.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    parent = [r for r in parents if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = client.search_runs([first.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 6


def check_run_form(schema: dict) -> None:
    """The run form the Prefect UI draws from the flow's parameter schema: typed, with defaults and help."""
    props, defs = schema["properties"], schema["definitions"]
    assert props["config"]["$ref"] == "#/definitions/PipelineConfig"
    assert "every stage's settings" in props["config"]["description"]
    assert set(defs["PipelineConfig"]["properties"]) == {"name", *STAGES, "flow"}
    mlm = defs["MaskConfig"]["properties"]["masked_lm_prob"]
    assert mlm["default"] == 0.15 and mlm["exclusiveMinimum"] == 0 and mlm["exclusiveMaximum"] == 1
    assert mlm["description"]
    recipe = defs["MaskConfig"]["properties"]["recipe"]
    assert recipe["enum"] == ["full", "nsp"] and recipe["default"] == "full"
    for section in ("IngestConfig", "VocabConfig", "MaskConfig", "PretrainConfig", "FinetuneConfig", "ScoreConfig",
                    "FlowConfig"):
        undocumented = [k for k, v in defs[section]["properties"].items() if not v.get("description")]
        assert undocumented == [], (section, undocumented)
        assert defs[section].get("additionalProperties") is False  # unknown keys are refused, as in YAML
    stages = props["stages"]["anyOf"][0]["items"]
    assert stages["enum"] == list(STAGES)


def test_serve_py_matches_prefect_yaml():
    """Single-box users (serve.py) get the same schedules and parameters as work-pool users (prefect.yaml)."""
    import yaml

    from bertflow.deployments.serve import build

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    served = {d.name: d for d in build()}
    assert set(served) == set(by_name)
    for name, dep in served.items():
        want = dict(by_name[name]["parameters"])
        config = PipelineConfig.model_validate(resolve_paths(PipelineConfig, want.pop("config"), REPO))
        got = dict(dep.parameters)
        assert got.pop("config") == config, name
        if "space" in want:
            assert got.pop("space") == SweepSpace.model_validate(want.pop("space")), name
        assert got == want, name
        (sched,) = dep.schedules
        assert sched.schedule.cron == want_cron(by_name[name]) and sched.schedule.timezone == "Europe/London"
        assert sched.active == by_name[name]["schedules"][0].get("active", True), name
    assert served["nightly-pipeline"].parameters["config"].flow.continue_from_champion
    assert served["nightly-score"].parameters["config"].score.model_uri == "models:/bertflow-tiny-books@champion"
    weekly = served["weekly-sweep"]
    assert not weekly.schedules[0].active  # optional: paused until a user turns it on
    assert weekly.parameters["space"] == load_space("tiny")  # the packaged space, as prefect.yaml spells it out


def want_cron(spec: dict) -> str:
    (sched,) = spec["schedules"]
    assert sched["timezone"] == "Europe/London"
    return sched["cron"]
