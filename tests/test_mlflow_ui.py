"""A real browser on the MLflow UI: two pipeline runs told apart in the run table and the compare view; a sweep's
parent run with its trial runs and its parallel-coordinates plot.

Starts `mlflow server` on 127.0.0.1 over the store of the ``cli_pipelines`` fixture (two tiny pipelines run by
the `bertflow` command, ``finetune.lr`` 0.001 and 0.003) and drives Debian's Chromium with Playwright (no browser
download). Screenshots go to the test's temporary folder.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bertflow.tasks import tracking
from tests.helpers import free_port, running

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def two_pipeline_runs(cli_pipelines):
    """The store, experiment and the two parent runs (oldest first)."""
    _, runs = cli_pipelines
    uri, exp = runs[0].summary["tracking_uri"], runs[0].summary["experiment_id"]
    client = tracking.client(uri)
    parents = [client.get_run(run.summary["parent_run_id"]) for run in runs]
    assert [p.data.params["finetune.lr"] for p in parents] == ["0.001", "0.003"]
    return uri, exp, parents


@pytest.fixture(scope="module")
def mlflow_ui(two_pipeline_runs):
    uri, _, _ = two_pipeline_runs
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri,
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


def test_run_table_and_compare_view_tell_two_pipelines_apart(mlflow_ui, two_pipeline_runs, browser, tmp_path):
    _, exp, parents = two_pipeline_runs
    page = browser.new_page(viewport={"width": 1800, "height": 1000})

    # The experiment's run table: both parent runs, by name, with their fine-tuned accuracy as a column.
    page.goto(f"{mlflow_ui}/#/experiments/{exp}/runs")
    for run in parents:
        page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Columns").click()
    page.get_by_placeholder("Search columns").fill("finetune.accuracy")
    page.get_by_text("finetune.accuracy", exact=True).first.click()
    page.keyboard.press("Escape")
    cells = page.locator("[role=gridcell][col-id='metrics.`finetune.accuracy`']")
    cells.first.wait_for(timeout=30_000)
    shown = {cells.nth(i).inner_text().strip() for i in range(cells.count())}
    assert {str(run.data.metrics["finetune.accuracy"]) for run in parents} <= shown, shown
    cells.first.scroll_into_view_if_needed()  # the grid scrolls sideways to the new column
    page.screenshot(path=str(tmp_path / "mlflow-runs.png"))

    # Expanding a pipeline run shows its six stage runs beneath it.
    name_cell = page.locator("[role=gridcell][col-id='attributes.`Run Name`']", has_text=parents[0].info.run_name)
    name_cell.first.locator("button").first.click()
    for stage in ("ingest", "vocab", "mask", "pretrain", "finetune", "score"):
        page.get_by_text(stage, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "mlflow-runs-expanded.png"))

    # The compare view of the two: the parameter that differs, with both values.
    ids = ",".join(f'"{run.info.run_id}"' for run in parents)
    page.goto(f"{mlflow_ui}/#/compare-runs?runs=[{ids}]&experiments=[\"{exp}\"]")
    row = page.locator("tr", has=page.get_by_text("finetune.lr", exact=True))
    row.first.wait_for(timeout=60_000)
    row.first.scroll_into_view_if_needed()
    cells = row.first.locator("th, td")
    assert sorted(cells.nth(i).inner_text().strip() for i in range(cells.count())) == ["0.001", "0.003", "finetune.lr"]
    page.screenshot(path=str(tmp_path / "mlflow-compare.png"))
    page.close()
    assert all((tmp_path / f"mlflow-{name}.png").stat().st_size > 0 for name in ("runs", "runs-expanded", "compare"))


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


def test_sweep_parent_lists_its_trials_and_opens_the_parallel_coordinates(sweep_ui, tiny_sweep, browser, tmp_path):
    _, result = tiny_sweep
    run_page = f"{sweep_ui}/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    page.goto(run_page)
    page.get_by_text("Child runs", exact=True).first.wait_for(timeout=60_000)
    for trial in result.trials:  # each trial run is a link on its parent's page
        link = page.get_by_role("link", name=f"trial-{trial.number}", exact=True)
        link.first.wait_for(timeout=30_000)
        assert link.count() == 1
    page.screenshot(path=str(tmp_path / "mlflow-sweep-parent.png"), full_page=True)

    page.goto(f"{run_page}/artifacts/plots/parallel_coordinate.html")
    plot = page.frame_locator("iframe.mlflow-html-iframe")
    plot.get_by_text("Parallel Coordinate Plot").first.wait_for(timeout=60_000)  # plotly.js ran in the frame
    assert plot.locator(".js-plotly-plot").count() == 1
    for axis in ("eval_metric", "finetune.lr"):  # the study's metric, and a swept key
        assert plot.get_by_text(axis, exact=True).count() >= 1, axis
    page.screenshot(path=str(tmp_path / "mlflow-sweep-parallel-coordinates.png"))
    page.close()
