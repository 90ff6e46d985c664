"""Real-client check of the deployments: a real `prefect server`, a process work pool, `prefect deploy`
from deployments/prefect.yaml, a triggered run, and a worker that executes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bertflow.bert_core.config import ALL_STAGES, PipelineConfig, load_config
from bertflow.bert_core.configtools import resolve_paths
from bertflow.bert_core.sweep.space import SweepSpace, load_space
from bertflow.deployments.serve import NIGHTLY_OVERRIDES
from bertflow.tasks import tracking
from tests.helpers import REPO, TINY_OVERRIDES, free_port, running, stop_process_group

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1"}  # a queued run retries after 1 s
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


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """The process work pool and the deployments of deployments/prefect.yaml, on the real server."""
    api, env = prefect_server
    env = {**env, "BERTFLOW_HOME": str(REPO)}
    prefect(["work-pool", "create", "bertflow-process", "--type", "process"], env)
    out = prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    assert "nightly-pipeline" in out and "nightly-score" in out
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    return api, env, {d["name"]: d for d in deps}


def test_server_binds_loopback_only(prefect_server):
    api, _ = prefect_server
    assert api.startswith("http://127.0.0.1:")


def test_deploy_trigger_and_work_the_nightly_pipeline(deployed, tiny_pipeline, tmp_path):
    api, env, by_name = deployed
    ws, first = tiny_pipeline
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
    flow_run_id = trigger("nightly-pipeline", params, env)

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


def test_overlapping_runs_queue_instead_of_failing(deployed, tmp_path):
    """Two runs of a nightly deployment at once: the second waits for the first (deployment concurrency limit 1,
    ENQUEUE) rather than failing on the workspace lock, and both complete."""
    api, env, by_name = deployed
    for name in ("nightly-pipeline", "nightly-score", "weekly-sweep"):
        assert by_name[name]["global_concurrency_limit"]["limit"] == 1, name
        assert by_name[name]["concurrency_options"]["collision_strategy"] == "ENQUEUE", name
    ws = tmp_path / "ws"
    params = json.dumps({"workspace": str(ws), "stages": ["ingest"],
                         "config": load_config("tiny", TINY_OVERRIDES).model_dump(mode="json")})
    runs = [trigger("nightly-pipeline", params, env) for _ in range(2)]
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "bertflow-process"], cwd=tmp_path,
                              env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        states = wait_final(api, runs, timeout_s=400)
    finally:
        stop_process_group(worker, grace_s=60)
    assert [s["type"] for s in states] == ["COMPLETED", "COMPLETED"], states
    history = [[s["name"] for s in httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id},
                                              timeout=10).json()] for run_id in runs]
    assert any("AwaitingConcurrencySlot" in names for names in history), history


def trigger(deployment: str, params: str, env: dict[str, str]) -> str:
    """Create a flow run of ``deployment`` (``prefect deployment run``); returns its id."""
    out = prefect(["deployment", "run", f"pipeline/{deployment}", "--params", params], env)
    return next(tok for tok in out.replace("'", " ").split() if len(tok) == 36 and tok.count("-") == 4)


def wait_final(api: str, run_ids: list[str], timeout_s: float) -> list[dict]:
    """The states of ``run_ids`` once all are final (or as they are at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"] for run_id in run_ids]
        if all(s["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states) \
                or time.monotonic() > deadline:
            return states
        time.sleep(1)


def check_run_form(schema: dict) -> None:
    """The run form the Prefect UI draws from the flow's parameter schema: typed, with defaults and help."""
    props, defs = schema["properties"], schema["definitions"]
    assert props["config"]["$ref"] == "#/definitions/PipelineConfig"
    assert "every stage's settings" in props["config"]["description"]
    assert set(defs["PipelineConfig"]["properties"]) == {"name", *ALL_STAGES, "flow"}
    mlm = defs["MaskConfig"]["properties"]["masked_lm_prob"]
    assert mlm["default"] == 0.15 and mlm["exclusiveMinimum"] == 0 and mlm["exclusiveMaximum"] == 1
    assert mlm["description"]
    recipe = defs["MaskConfig"]["properties"]["recipe"]
    assert recipe["enum"] == ["full", "nsp"] and recipe["default"] == "full"
    for section in ("IngestConfig", "VocabConfig", "MaskConfig", "PretrainConfig", "FinetuneConfig", "DistillConfig",
                    "ScoreConfig", "FlowConfig"):
        undocumented = [k for k, v in defs[section]["properties"].items() if not v.get("description")]
        assert undocumented == [], (section, undocumented)
        assert defs[section].get("additionalProperties") is False  # unknown keys are refused, as in YAML
    stages = props["stages"]["anyOf"][0]["items"]
    assert stages["enum"] == list(ALL_STAGES)


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
        limit = by_name[name]["concurrency_limit"]
        assert (dep.concurrency_limit, dep.concurrency_options.collision_strategy.value) == (
            limit["limit"], limit["collision_strategy"]) == (1, "ENQUEUE"), name
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
