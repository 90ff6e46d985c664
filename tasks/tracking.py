"""MLflow tracking for flows: one parent run per flow run, one nested run per stage.

MLflow's "active run" is thread-local and Prefect may run tasks in other threads,
so everything here goes through an explicit ``MlflowClient`` and ``run_id``.
The tracking URI is always absolute: a SQLite file inside the workspace unless
``MLFLOW_TRACKING_URI`` points elsewhere (e.g. a shared ``mlflow server``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from bertflow.bert_core.configtools import flatten

MAX_PARAM_LEN = 6000


def tracking_uri_for(workspace: str | Path) -> str:
    """The tracking URI to use: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<workspace>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(workspace).resolve() / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when a remote tracking server is down (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from bertflow.bert_core.errors import InputError

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise InputError(f"MLflow tracking server {uri} is not reachable ({problem}); start it or unset MLFLOW_TRACKING_URI")


def configure(workspace: str | Path) -> str:
    """Point MLflow (tracking and registry) at the workspace store; returns the URI."""
    uri = tracking_uri_for(workspace)
    check_reachable(uri)
    use_store(uri)
    return uri


def use_store(uri: str) -> None:
    """Point MLflow's process-wide tracking and registry URIs at ``uri``, leaving the environment alone.

    MLflow 3's setters also export the URIs to the environment, which would point every
    later run in this process (a served deployment's next flow run, another workspace)
    at this store: the user's environment is put back as it was.
    """
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def client(tracking_uri: str | None = None) -> MlflowClient:
    """The one way bertflow (and its tests) get a client: tracking and registry in the store at ``tracking_uri``.

    ``None``: the process-wide store that :func:`use_store` points at.
    """
    if not tracking_uri:
        return MlflowClient()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, workspace: str | Path) -> str:
    """Experiment id for ``name``, created with its artifacts inside the workspace if new."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if tracking_uri.startswith("sqlite:"):
        artifacts = (Path(workspace).resolve() / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=artifacts)


def start_run(
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(tracking_uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, failed: bool = False) -> None:
    client(tracking_uri).set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def run_scope(tracking_uri: str, run_id: str) -> Iterator[str]:
    """End ``run_id`` as FINISHED, or FAILED if the block raises."""
    try:
        yield run_id
    except BaseException:
        end_run(tracking_uri, run_id, failed=True)
        raise
    end_run(tracking_uri, run_id)


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """Sample CPU, memory, disk, network (and NVIDIA GPUs when ``nvidia-ml-py`` is installed) into ``run_id``.

    MLflow's monitor logs ``system/*`` metrics every ``interval_s`` seconds (or
    ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) from a thread, but drops the samples of
    the last, partial interval; they are published here so that short stages get numbers too.
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
    except Exception as exc:  # e.g. psutil missing: tracking must not fail a stage
        logging.getLogger(__name__).warning("system metrics off for run %s: %s", run_id, exc)
        yield
        return
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        try:
            if any(m.metrics for m in monitor.monitors):
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as exc:
            logging.getLogger(__name__).warning("could not log the last system metrics of run %s: %s", run_id, exc)


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log a (nested) dict as flattened params; long values are cut to MLflow's limit."""
    from mlflow.entities import Param

    flat = flatten(params)
    items = [Param(k, _param_value(v)) for k, v in sorted(flat.items())]
    c = client(tracking_uri)
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if items:
        client(tracking_uri).log_batch(run_id, metrics=items)


def log_dict(tracking_uri: str, run_id: str, data: Any, artifact_file: str) -> None:
    """Log a dict as a JSON or YAML artifact (by the file's extension)."""
    client(tracking_uri).log_dict(run_id, data, artifact_file)


def log_artifact(tracking_uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client(tracking_uri).log_artifact(run_id, str(path), artifact_path)


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A link to the run in the MLflow UI (default UI address for a local store)."""
    base = os.environ.get("BERTFLOW_MLFLOW_UI", "http://127.0.0.1:5000")
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def _param_value(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."

