"""A real browser on the MLflow UI: two pipeline runs, their nested stage runs, and the compare view; a sweep's
parent run with its trial runs and its parallel-coordinates plot.

Starts `mlflow server` on 127.0.0.1 over the tiny pipeline's store and drives Debian's Chromium with
Playwright (no browser download). Saves screenshots under test-artifacts/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bertflow.tasks import tracking
from tests.helpers import REPO, TINY_OVERRIDES, free_port, running

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"


def parent_runs(client: MlflowClient, exp_id: str):
    runs = client.search_runs([exp_id], filter_string="tags.`bertflow.stages` = 'ingest,vocab,mask,pretrain,finetune,score'")
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


@pytest.fixture(scope="module")
def two_pipeline_runs(tiny_pipeline):
    ws, summary = tiny_pipeline
    client = tracking.client(summary.tracking_uri)
    if len(parent_runs(client, summary.experiment_id)) < 2:
        from bertflow.api import run_pipeline

        run_pipeline("tiny", workspace=ws, overrides=TINY_OVERRIDES)
    runs = parent_runs(client, summary.experiment_id)[:2]
    assert len(runs) == 2
    return summary, runs


@pytest.fixture(scope="module")
def mlflow_ui(two_pipeline_runs):
    summary, _ = two_pipeline_runs
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", summary.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running(cmd, f"{url}/health", timeout=90):
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright import sync_api  # a test dependency (pyproject's `test` extra); only Chromium may be missing
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"],
        )
        yield b
        b.close()


def test_runs_nested_stages_and_compare_view(mlflow_ui, two_pipeline_runs, browser):
    summary, runs = two_pipeline_runs
    exp = summary.experiment_id
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    page.goto(f"{mlflow_ui}/#/experiments/{exp}/runs")
    for run in runs:
        page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)

    # Expand the first pipeline run: its six stage runs appear beneath it.
    name_cell = page.locator("[role=gridcell][col-id='attributes.`Run Name`']", has_text=runs[0].info.run_name)
    name_cell.first.locator("button").first.click()
    for stage in ("ingest", "vocab", "mask", "pretrain", "finetune", "score"):
        page.get_by_text(stage, exact=True).first.wait_for(timeout=30_000)
        assert page.get_by_text(stage, exact=True).count() >= 1, stage
    page.screenshot(path=str(ARTIFACTS / "mlflow-runs.png"))

    ids = ",".join(f'"{r.info.run_id}"' for r in runs)
    page.goto(f"{mlflow_ui}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp}\"]")
    page.get_by_text("pipeline_seconds").first.wait_for(timeout=60_000)
    assert page.get_by_text("pipeline_seconds").count() >= 1
    for run in runs:
        page.get_by_text(run.info.run_name).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "mlflow-compare.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def sweep_ui(tiny_sweep):
    """``mlflow server`` over the tiny sweep's own store."""
    _, result = tiny_sweep
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", result.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running(cmd, f"{url}/health", timeout=90):
        yield url


def test_sweep_parent_lists_its_trials_and_opens_the_parallel_coordinates(sweep_ui, tiny_sweep, browser):
    _, result = tiny_sweep
    run_page = f"{sweep_ui}/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    page.goto(run_page)
    page.get_by_text("Child runs", exact=True).first.wait_for(timeout=60_000)
    for trial in result.trials:  # each trial run is a link on its parent's page
        link = page.get_by_role("link", name=f"trial-{trial.number}", exact=True)
        link.first.wait_for(timeout=30_000)
        assert link.count() == 1
    page.screenshot(path=str(ARTIFACTS / "mlflow-sweep-parent.png"), full_page=True)

    page.goto(f"{run_page}/artifacts/plots/parallel_coordinate.html")
    plot = page.frame_locator("iframe.mlflow-html-iframe")
    plot.get_by_text("Parallel Coordinate Plot").first.wait_for(timeout=60_000)  # plotly.js ran in the frame
    assert plot.locator(".js-plotly-plot").count() == 1
    for axis in ("eval_metric", "finetune.lr"):  # the study's metric, and a swept key
        assert plot.get_by_text(axis, exact=True).count() >= 1, axis
    page.screenshot(path=str(ARTIFACTS / "mlflow-sweep-parallel-coordinates.png"))
    page.close()
