"""Scoring runners share one path: the Ray runner (prefect-ray, a local 2-CPU Ray) plans, checks the model,
commits and reports exactly as the local runner does; only where each file is scored differs."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pyarrow.compute as pc
import pytest

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.results import FileResult
from bertflow.bert_core.stageio import read_manifest
from bertflow.tasks import tracking
from tests.helpers import make_lake, score_cfg

FIELDS = {f.name for f in dataclasses.fields(FileResult)}


def _sorted_predictions(path):
    from bertflow.bert_core.score.stage import output_dataset

    table = output_dataset(path).to_table(columns=["id", "label", "score", "error"])
    return table.take(pc.sort_indices(table, [("id", "ascending")])).to_pydict()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """One tracked workspace for the module (creating an MLflow SQLite store takes seconds)."""
    return tmp_path_factory.mktemp("runners-ws")


def _score_stage(ws, outs: dict[str, tuple]) -> dict:
    """Run the pipeline's score stage task once per ``name: (cfg, model_dir)``, in one flow, tracked in ``ws``."""
    from prefect import flow
    from prefect.context import get_run_context

    from bertflow.tasks import stages, tracking
    from bertflow.tasks.stage_runner import TrackingContext

    uri = tracking.configure(ws)
    exp = tracking.ensure_experiment(uri, "runners", ws)
    parent = tracking.start_run(uri, exp, "runners")
    ctx = TrackingContext(uri, exp, parent, str(ws))

    @flow(name="score-runners")
    def score_all():
        flow_run_id = str(get_run_context().flow_run.id)
        return {name: stages.score(ctx, cfg, str(model), str(ws / name)) for name, (cfg, model) in outs.items()} | {
            "flow_run_id": flow_run_id, "tracking_uri": uri, "parent_run_id": parent}

    return score_all()


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_a_damaged_model_fails_the_run_once_before_any_file(prefect_harness, tiny_model, ws, tmp_path, runner):
    """Bug: the Ray path skipped the model check, so a damaged model became every file failed."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    make_lake(tmp_path / "lake", files=3, rows=4)
    cfg = score_cfg(tmp_path / "lake", runner=runner)
    with pytest.raises(InputError, match=f"weights file {re.escape(str(weights))} is truncated or corrupt") as err:
        _score_stage(ws, {f"damaged-{runner}": (cfg, model)})
    assert str(err.value).count(str(weights)) == 1  # one error for the model, not one per file
    out = ws / f"damaged-{runner}"
    assert not (out / "manifest.json").exists()  # no run reported, so no file marked failed
    assert not list(out.rglob("*.parquet"))


@pytest.mark.slow
def test_ray_runner_gives_the_local_output_manifest_and_results(prefect_harness, tiny_model, ws, tmp_path):
    lake = tmp_path / "lake"
    make_lake(lake, files=3, rows=16, seed=3)
    (lake / "part-bad.parquet").write_bytes(b"not parquet" * 20)
    summaries = _score_stage(ws, {name: (score_cfg(lake, runner=name), tiny_model) for name in ("local", "ray")})
    local, ray = (read_manifest(ws / name, "score") for name in ("local", "ray"))

    assert set(ray) == set(local) and set(ray["metrics"]) == set(local["metrics"])
    for manifest, summary in ((local, summaries["local"]), (ray, summaries["ray"])):
        assert [set(f) for f in manifest["files"]] == [FIELDS] * 4  # every file reported with every field
        assert [set(f) for f in summary.details["files"]] == [FIELDS] * 4  # the stage summary too, as JSON
        assert {f["input"]: f["status"] for f in manifest["files"]} == {
            "part-000.parquet": "scored", "part-001.parquet": "scored", "part-002.parquet": "scored",
            "part-bad.parquet": "failed"}
        (failed,) = manifest["failed"]
        assert failed["input"] == "part-bad.parquet" and str(lake / "part-bad.parquet") in failed["reason"]
        assert "Parquet" in failed["reason"]
        assert summary.metrics["files_scored"] == 3 and summary.metrics["files_failed"] == 1
    counts = ("rows_in", "rows_filtered", "rows_out", "rows_scored", "rows_error", "rows_truncated", "errors_by_code")
    assert [{k: f[k] for k in counts} for f in ray["files"]] == [{k: f[k] for k in counts} for f in local["files"]]

    got, want = _sorted_predictions(ws / "ray"), _sorted_predictions(ws / "local")
    assert got["id"] == want["id"] == list(range(48)) and got["label"] == want["label"]
    assert got["error"] == want["error"] and got["score"] == pytest.approx(want["score"], abs=1e-5)

    # One MLflow run per stage whatever the runner, and a Prefect table of per-file counts.
    client = tracking.client(summaries["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("runners").experiment_id],
                              f"tags.`mlflow.parentRunId` = '{summaries['parent_run_id']}'")
    assert {r.info.run_id for r in runs} == {summaries["local"].run_id, summaries["ray"].run_id}
    assert sorted(r.data.params["runner"] for r in runs) == ["local", "ray"]
    assert all(r.data.metrics["files_scored"] == 3 and r.data.metrics["files_failed"] == 1 for r in runs)
    tables = _tables(summaries["flow_run_id"], "score-files")
    assert [sorted(row["input"] for row in t) for t in tables] == [sorted(f["input"] for f in local["files"])] * 2
    assert all(row["rows_in"] == 16 for t in tables for row in t if row["status"] == "scored")


def _tables(flow_run_id: str, key: str) -> list[list[dict]]:
    """The rows of each Prefect table artifact ``key`` of one flow run."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return [json.loads(a.data) if isinstance(a.data, str) else a.data for a in artifacts]


def test_ray_workers_score_with_the_int8_file_the_gate_passed(prefect_harness, tiny_model, ws, tmp_path):
    """The gate runs once in the driver; workers (other processes) load the int8 file from the workspace cache."""
    lake = tmp_path / "lake"
    make_lake(lake, files=2, rows=16, seed=4)
    outs = {f"{name}-int8": (score_cfg(lake, runner=name, backend="onnx-int8", min_agreement=0.0), tiny_model)
            for name in ("local", "ray")}  # the tiny random model's int8 fidelity is test_score_onnx.py's matter
    summaries = _score_stage(ws, outs)
    got, want = _sorted_predictions(ws / "ray-int8"), _sorted_predictions(ws / "local-int8")
    assert got["id"] == want["id"] == list(range(32)) and got["label"] == want["label"]
    assert got["score"] == pytest.approx(want["score"], abs=1e-6)  # the same int8 model, batched the same
    for name in outs:
        manifest = read_manifest(ws / name, "score")
        assert manifest["dtype"] == "int8" and manifest["parity"]["units"] == 32
        assert summaries[name].metrics["files_scored"] == 2
    assert len(list((ws / "score" / ".onnx").glob("*/model-int8.onnx"))) == 1
