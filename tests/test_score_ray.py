"""Scale-out: scoring mapped over files on a local 2-CPU Ray through prefect-ray equals the local runner."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from bertflow.bert_core.config import load_config
from tests.conftest import REPO, TINY_OVERRIDES

pytestmark = pytest.mark.slow


def _sorted_predictions(path):
    from bertflow.bert_core.score.stage import output_dataset

    table = output_dataset(path).to_table(columns=["id", "label", "score", "error"])
    return table.take(pc.sort_indices(table, [("id", "ascending")])).to_pydict()


def test_ray_runner_gives_the_local_output(tiny_pipeline, tmp_path):
    from prefect import flow

    from bertflow.flows.score import run_score_stage
    from bertflow.tasks import tracking
    from bertflow.tasks.stage_runner import TrackingContext

    ws, summary = tiny_pipeline
    cfg = load_config(REPO / "configs/tiny.yaml",
                      [*TINY_OVERRIDES, "score.runner=ray", f"score.input={REPO / 'data/lake'}"]).score
    uri = summary.tracking_uri
    parent = tracking.start_run(uri, summary.experiment_id, "ray-scoring-test")
    ctx = TrackingContext(uri, summary.experiment_id, parent, str(ws))

    @flow(name="ray-scoring-test")
    def parent_flow():
        return run_score_stage(ctx, cfg, str(ws / "finetune" / "model"), str(tmp_path / "ray-scores"))

    result = parent_flow()
    assert result.metrics["files_scored"] == 2
    ray, local = _sorted_predictions(tmp_path / "ray-scores"), _sorted_predictions(ws / "score")
    assert ray["id"] == local["id"] and ray["label"] == local["label"] and ray["error"] == local["error"]
    assert [s is None for s in ray["score"]] == [s is None for s in local["score"]]
    assert [s for s in ray["score"] if s is not None] == pytest.approx([s for s in local["score"] if s is not None],
                                                                      abs=1e-5)
