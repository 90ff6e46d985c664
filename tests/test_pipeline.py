"""The whole pipeline on the bundled sample, with the real Prefect API and a real MLflow store."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from bertflow.bert_core.config import STAGES
from bertflow.tasks import tracking
from tests.helpers import REPO, TINY_OVERRIDES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline):
    return tiny_pipeline


def test_every_stage_writes_its_directory(tiny_run):
    ws, summary = tiny_run
    assert list(summary.stages) == list(STAGES)
    for stage, result in summary.stages.items():
        out = Path(result.path)
        home = ws / "score" if stage == "score" else ws  # scoring writes <workspace>/score/<job>
        assert out.is_dir() and out.parent == home, stage
        assert (out / "manifest.json").is_file(), stage
    last = json.loads((ws / "last_run.json").read_text())  # other tests may have run the pipeline here since
    assert list(last["stages"]) == list(STAGES) or last["parent_run_id"] == summary.parent_run_id


def test_mlflow_has_one_parent_and_six_nested_stage_runs(tiny_run):
    ws, summary = tiny_run
    uri = summary.tracking_uri
    assert uri == f"sqlite:///{ws / 'mlflow.db'}"  # absolute, inside the workspace
    client = tracking.client(uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["pretrain.hidden_size"] == "64"
    assert "config.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    children = client.search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["bertflow.stage"] for r in children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children)
    by_stage = {r.data.tags["bertflow.stage"]: r for r in children}
    assert by_stage["pretrain"].data.metrics["steps"] == 30
    assert "loss" in by_stage["pretrain"].data.metrics
    assert by_stage["ingest"].data.metrics["docs_out"] >= 5
    # Training curves carry their steps, so the charts view draws them.
    assert [m.step for m in client.get_metric_history(by_stage["pretrain"].info.run_id, "loss")] == [10, 20, 30]
    epochs = by_stage["finetune"].data.metrics["epochs_run"]
    assert len({m.step for m in client.get_metric_history(by_stage["finetune"].info.run_id, "valid_accuracy")}) == epochs


def test_parent_run_compares_at_a_glance(tiny_run):
    """Named after config and time, described, tagged with code and device, stage headlines copied onto it."""
    import bertflow

    ws, summary = tiny_run
    client = tracking.client(summary.tracking_uri)
    parent = client.get_run(summary.parent_run_id)
    assert re.fullmatch(r"bertflow-tiny \d{4}-\d\d-\d\d \d\d:\d\d", parent.info.run_name)
    tags = parent.data.tags
    assert tags["bertflow.version"] == bertflow.__version__ and tags["bertflow.device"] == "cpu"
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert tags["bertflow.git_commit"] == head.strip() == tags["mlflow.source.git.commit"]
    note = tags["mlflow.note.content"]
    assert "finished in" in note and summary.stages["finetune"].run_id in note
    (prefect_line,) = [line for line in note.splitlines() if line.startswith("Prefect flow run: ")]
    assert f"{tags['prefect.flow_run_name']} ({tags['prefect.flow_run_id']})" in prefect_line
    assert f"/runs/flow-run/{tags['prefect.flow_run_id']})" in prefect_line  # this API serves a UI: a link to it
    assert all(f"| {stage} |" in note for stage in STAGES)
    metrics = parent.data.metrics
    for stage, key in [("pretrain", "final_loss"), ("pretrain", "mlm_accuracy"), ("finetune", "accuracy"),
                       ("score", "rows_per_s"), ("ingest", "docs_out")]:
        assert metrics[f"{stage}.{key}"] == pytest.approx(summary.stages[stage].metrics[key]), (stage, key)
    assert set(STAGES) == {k.split(".")[0] for k in metrics if k.endswith(".seconds")}
    read = {d.dataset.name for d in parent.inputs.dataset_inputs}  # what the pipeline read from outside
    assert {"train:train.csv", "lake:lake"} <= read and not any(n.startswith(("corpus:", "data:")) for n in read)


def test_finetuned_model_is_registered_and_scores_every_row(tiny_run):
    ws, summary = tiny_run
    reg = summary.stages["finetune"].registry
    client = tracking.client(summary.tracking_uri)
    mv = client.get_model_version_by_alias(reg.name, "candidate")
    assert str(mv.version) == reg.version
    scored = Path(summary.stages["score"].path)
    assert scored.parent == ws / "score" and scored.name.startswith("lake-")  # <workspace>/score/<job>
    table = ds.dataset(scored, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    lake = ds.dataset("data/lake" if Path("data/lake").exists() else Path(__file__).parents[1] / "data/lake",
                      format="parquet", partitioning="hive").to_table()
    assert table.num_rows == lake.num_rows
    assert sorted(table.column("id").to_pylist()) == sorted(lake.column("id").to_pylist())
    labels = set(table.column("label").drop_null().to_pylist())
    assert labels <= {"alice", "time_machine", "jekyll"}
    errors = table.column("error").to_pylist()
    assert sum(e is not None for e in errors) >= 2  # the null and the empty text are flagged, not dropped


def test_the_registered_model_is_logged_from_code_not_pickled(tiny_run):
    """What `make demo` registers loads without bertflow (and logging it printed no CloudPickle warning)."""
    from urllib.parse import urlparse

    import yaml

    ws, summary = tiny_run
    reg = summary.stages["finetune"].registry
    logged = tracking.client(summary.tracking_uri).get_logged_model(reg.model_uri.removeprefix("models:/"))
    root = Path(urlparse(logged.artifact_location).path)
    spec = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))
    assert spec["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (root / "hf_pyfunc.py").is_file() and (root / "artifacts" / "hf_model" / "model.safetensors").is_file()
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".bin", ".pt")]


def test_rerun_with_unchanged_inputs_reuses_every_stage(tiny_run, tmp_path):
    from bertflow.api import run_pipeline

    ws, first = tiny_run
    again = run_pipeline("tiny", workspace=ws, overrides=TINY_OVERRIDES)
    # Scored elsewhere, so the shared workspace's scores stay what every other test expects.
    changed = run_pipeline("tiny", workspace=ws, stages=["score"],
                           overrides=[*TINY_OVERRIDES, "score.probabilities=true", f"score.output={tmp_path / 'p'}"])
    assert [s for s, r in again.stages.items() if not r.reused] == []
    assert again.parent_run_id != first.parent_run_id
    assert not changed.stages["score"].reused  # a config change recomputes that stage
    assert changed.stages["score"].path == str(tmp_path / "p") and (tmp_path / "p" / "manifest.json").is_file()
    scored = tracking.client(changed.tracking_uri).get_run(changed.parent_run_id)  # the scored lake's run
    assert scored.info.run_name.startswith("bertflow-tiny score ") and "| score |" in scored.data.tags["mlflow.note.content"]
    assert scored.data.metrics["score.rows_per_s"] > 0 and "pretrain.final_loss" not in scored.data.metrics


def test_lineage_datasets_chain_stage_outputs_to_the_next_inputs(tiny_run):
    ws, summary = tiny_run
    client = tracking.client(summary.tracking_uri)

    def datasets(stage):
        run = client.get_run(summary.stages[stage].run_id)
        return {(d.dataset.name.split(":")[0], d.tags[0].value): d.dataset.digest for d in run.inputs.dataset_inputs}

    ingest, vocab, mask = datasets("ingest"), datasets("vocab"), datasets("mask")
    assert ("files", "input") in ingest
    assert ingest[("output", "output")] == vocab[("corpus", "input")] == mask[("corpus", "input")]
    assert vocab[("output", "output")] == mask[("tokenizer", "input")]
    assert datasets("score")[("lake", "input")]
