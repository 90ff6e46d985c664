"""Cheap CPU scoring: the ONNX Runtime backends (fp32, int8) behind the one scoring path, and their parity gate.

The real MiniLM-L6 checkpoint with a fitted topic head (``minilm_classifier``) for parity;
tiny models where only the plumbing is under test. References are torch fp32 runs of the
same path (themselves checked against plain transformers in test_score.py).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import numpy_helper

from bertflow.bert_core.errors import ConfigError, ParityError
from bertflow.bert_core.score.onnx_export import model_folder
from bertflow.bert_core.score.stage import run
from bertflow.bert_core.stageio import model_dir_digest, read_manifest
from tests.helpers import (build_tiny_head, head_lake, make_lake, read_scored, score_cfg, topic_rows,
                           write_parquet)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def topic_lake(path, n: int, seed: int) -> list[str | None]:
    """``n`` topic sentences and two bad rows (null, blank) in one file; returns the texts."""
    texts = [t for t, _ in topic_rows(n, seed)] + [None, "  "]
    write_parquet(path, {"id": list(range(len(texts))), "text": texts})
    return texts


def probabilities(table: pa.Table) -> np.ndarray:
    return np.stack([p if p is not None else [np.nan] * 3 for p in table["probabilities"].to_pylist()])


# ------------------------------------------------------------------------------------------------ parity
def test_onnx_fp32_equals_torch_fp32_on_minilm(minilm_classifier, tmp_path):
    topic_lake(tmp_path / "in.parquet", 60, seed=3)
    common = dict(probabilities=True, embeddings="mean", batch_size=16, max_length=32)
    run(score_cfg(tmp_path / "in.parquet", **common), minilm_classifier, tmp_path / "torch")
    result = run(score_cfg(tmp_path / "in.parquet", backend="onnx", **common), minilm_classifier, tmp_path / "onnx",
                 cache_dir=tmp_path / "cache")
    ref, got = read_scored(tmp_path / "torch").sort_by("id"), read_scored(tmp_path / "onnx").sort_by("id")
    assert got["id"].to_pylist() == list(range(62)) and got["error"].to_pylist() == ref["error"].to_pylist()
    assert got["label"].to_pylist() == ref["label"].to_pylist() and len(set(ref["label"].to_pylist())) == 4  # 3 + null
    np.testing.assert_allclose(probabilities(got), probabilities(ref), atol=1e-4)
    emb = [np.stack(t["embedding"].to_numpy(zero_copy_only=False)[:60]) for t in (got, ref)]
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-4)
    manifest = read_manifest(tmp_path / "onnx", "score")
    assert manifest["backend"] == "onnx" and manifest["dtype"] == "float32"
    parity = manifest["parity"]
    assert parity["agreement"] == 1.0 and parity["max_abs_delta"] < 1e-4 and parity["rows"] == 60
    assert parity["source"].startswith("the input") and result.metrics["parity_agreement"] == 1.0
    folder = model_folder(tmp_path / "cache", model_dir_digest(minilm_classifier))
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "export.json"}
    assert not (folder / "model-int8.onnx").exists()
    assert len(list(folder.glob("parity-onnx-*.json"))) == 1


def test_onnx_int8_passes_the_gate_and_runs_exactly_once(minilm_classifier, tmp_path):
    lake = tmp_path / "in.parquet"
    topic_lake(lake, 100, seed=4)
    cache = tmp_path / "cache"
    first = run(score_cfg(lake, backend="onnx-int8", probabilities=True), minilm_classifier, tmp_path / "out",
                cache_dir=cache)
    m = first.metrics
    assert m["rows_in"] == 102 == m["rows_scored"] + m["rows_error"] and m["rows_error"] == 2  # rows in = rows out
    assert m["parity_agreement"] >= 0.97 and 0 < m["parity_mean_abs_delta"] < m["parity_max_abs_delta"] < 0.5
    manifest = read_manifest(tmp_path / "out", "score")
    assert manifest["dtype"] == "int8" and manifest["parity"]["units"] == 100
    folder = model_folder(cache, model_dir_digest(minilm_classifier))
    sizes = [(folder / name).stat().st_size for name in ("model-int8.onnx", "model.onnx")]
    assert sizes[0] < 0.7 * sizes[1]  # the linear layers' weights are int8 (the fp32 word embeddings stay)
    run(score_cfg(lake, probabilities=True), minilm_classifier, tmp_path / "torch")
    got, ref = read_scored(tmp_path / "out").sort_by("id"), read_scored(tmp_path / "torch").sort_by("id")
    same = np.mean([a == b for a, b in zip(got["label"].to_pylist()[:100], ref["label"].to_pylist()[:100])])
    assert same >= 0.97 and np.nanmax(np.abs(probabilities(got) - probabilities(ref))) > 1e-4  # int8, not fp32
    again = run(score_cfg(lake, backend="onnx-int8", probabilities=True), minilm_classifier, tmp_path / "out",
                cache_dir=cache)
    assert again.metrics["files_skipped"] == 1 and again.metrics["files_scored"] == 0
    redo = run(score_cfg(lake, probabilities=True), minilm_classifier, tmp_path / "out")
    assert redo.metrics["files_scored"] == 1  # another backend's output is not this one's: redone


def test_a_broken_int8_model_is_refused_with_its_figures(minilm_classifier, tmp_path):
    finetune = tmp_path / "finetune"  # the fine-tune stage's layout: model/ and the labelled validation set
    shutil.copytree(minilm_classifier, finetune / "model", copy_function=os.link)
    valid = topic_rows(90, seed=5)
    pq.write_table(pa.table({"row": list(range(90)), "text": [t for t, _ in valid], "label": [y for _, y in valid]}),
                   finetune / "predictions.parquet")
    model, lake, cache = finetune / "model", tmp_path / "in.parquet", tmp_path / "cache"
    topic_lake(lake, 30, seed=6)
    ok = run(score_cfg(lake, backend="onnx-int8"), model, tmp_path / "ok", cache_dir=cache)
    parity = read_manifest(tmp_path / "ok", "score")["parity"]
    assert parity["source"].endswith("predictions.parquet") and parity["rows"] == 90 and parity["metric"] == "accuracy"
    assert parity["metric_fp32"] >= 90 and abs(parity["metric_drop"]) <= 1.0 and ok.metrics["parity_metric_delta"] <= 1

    folder = model_folder(cache, model_dir_digest(model))
    broken = onnx.load(str(folder / "model-int8.onnx"))
    zeroed = 0
    for init in broken.graph.initializer:  # the int8 weights of every quantized linear layer
        if init.name.endswith("_quantized"):
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
            zeroed += 1
    assert zeroed >= 36  # 6 layers x (q, k, v, attention output, two feed-forward)
    onnx.save(broken, str(folder / "model-int8.onnx"))
    figures = (r"failed its parity gate: accuracy \d+\.\d\d against \d+\.\d\d with torch fp32, \d+\.\d\d points "
               r"lower .*agreement with torch fp32 \d+\.\d\d%")
    with pytest.raises(ParityError, match=figures) as exc:
        run(score_cfg(lake, backend="onnx-int8"), model, tmp_path / "refused", cache_dir=cache)
    assert exc.value.figures["parity_agreement"] < 0.9 and exc.value.figures["parity_metric_delta"] < -10
    assert not list((tmp_path / "refused").glob("*.parquet"))  # nothing scored
    verdicts = list(folder.glob("parity-onnx-int8-*.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["agreement"] < 0.9  # bound to the new file
    stamp = verdicts[0].stat().st_mtime_ns
    loose = run(score_cfg(lake, backend="onnx-int8", min_agreement=0.0, max_metric_drop=100.0), model,
                tmp_path / "loose", cache_dir=cache)  # the cached figures, judged by the new thresholds
    assert verdicts[0].stat().st_mtime_ns == stamp and loose.metrics["parity_agreement"] < 0.9


@pytest.mark.parametrize("head", ["token", "qa"])
def test_token_and_qa_heads_score_the_same_on_onnx(head, tmp_path):
    model = build_tiny_head(tmp_path / "model", head)
    head_lake(tmp_path / "in.parquet", head)
    common = dict(max_length=24, stride=4) if head == "qa" else dict(max_length=16, stride=4, aggregation="first")
    run(score_cfg(tmp_path / "in.parquet", **common), model, tmp_path / "torch")
    run(score_cfg(tmp_path / "in.parquet", backend="onnx", **common), model, tmp_path / "onnx",
        cache_dir=tmp_path / "cache")
    ref, got = read_scored(tmp_path / "torch").sort_by("id"), read_scored(tmp_path / "onnx").sort_by("id")
    if head == "token":
        def spans(t):
            return [[{k: v for k, v in e.items() if k != "score"} for e in row] for row in t["entities"].to_pylist()]

        assert spans(got) == spans(ref) and sum(map(len, spans(ref))) > 20
    else:
        for col in ("answer", "answer_start", "answer_end"):
            assert got[col].to_pylist() == ref[col].to_pylist()
        assert len(set(ref["answer"].to_pylist())) > 10
    np.testing.assert_allclose(got["score"].to_numpy(zero_copy_only=False) if head == "qa" else
                               [e["score"] for row in got["entities"].to_pylist() for e in row],
                               ref["score"].to_numpy(zero_copy_only=False) if head == "qa" else
                               [e["score"] for row in ref["entities"].to_pylist() for e in row], atol=1e-4)
    int8 = run(score_cfg(tmp_path / "in.parquet", backend="onnx-int8", min_agreement=0.0, **common), model,
               tmp_path / "int8", cache_dir=tmp_path / "cache")
    assert int8.metrics["rows_scored"] == 40 and int8.details["parity"]["units"] > 40  # tokens / answer windows


def test_backend_settings_are_checked(tiny_model, tmp_path):
    from bertflow.bert_core.score.config import ScoreConfig

    with pytest.raises(ConfigError, match="score.backend.*runs on the CPU.*score.device is 'cuda'"):
        ScoreConfig(device="cuda", backend="onnx-int8")
    with pytest.raises(ConfigError, match="score.backend"):
        ScoreConfig(backend="tensorrt")
    with pytest.raises(ConfigError, match="score.min_agreement"):
        ScoreConfig(min_agreement=1.5)
    make_lake(tmp_path / "lake", files=1, rows=0)  # nothing to compare on is nothing to score: no gate, no error
    empty = run(score_cfg(tmp_path / "lake", backend="onnx-int8"), tiny_model, tmp_path / "out")
    assert empty.metrics["rows_in"] == 0 and read_manifest(tmp_path / "out", "score")["parity"] is None


# ------------------------------------------------------------------------------------------------ tasks layer
def test_the_int8_files_go_to_mlflow_and_the_registry_version_brings_them_back(prefect_harness, minilm_classifier,
                                                                                tmp_path, monkeypatch):
    """Job 1 exports, logs the files to its run and tags the version; job 2 (an empty workspace) downloads them.
    A refused job still logs the gate's figures to its (failed) run."""
    import mlflow

    from bertflow.api import score
    from bertflow.tasks import registry, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # both workspaces share one tracking server
    before = mlflow.get_tracking_uri()
    try:
        c = tracking.client(uri)
        exp = c.create_experiment("models", artifact_location=(tmp_path / "artifacts").as_uri())
        logged = registry.log_model(minilm_classifier, None, tracking_uri=uri, experiment_id=exp)
        version = registry.register(logged, "topics", client=c)
        topic_lake(tmp_path / "lake" / "part-0.parquet", 40, seed=8)
        keys = dict(backend="onnx-int8", device="cpu", cpu_threads=1, batch_size=16, max_length=32)
        model = f"models:/topics/{version}"
        first = score(tmp_path / "lake", model, output=tmp_path / "out1", workspace=tmp_path / "ws1", **keys)
        files = {a.path.rsplit("/", 1)[-1] for a in c.list_artifacts(first.run_id, "onnx/onnx-int8")}
        assert {"model-int8.onnx", "export.json"} <= files and any(f.startswith("parity-onnx-int8-") for f in files)
        tag = c.get_model_version("topics", str(version)).tags["bertflow.onnx.onnx-int8"]
        assert tag == f"runs:/{first.run_id}/onnx/onnx-int8"
        assert c.get_run(first.run_id).data.metrics["parity_agreement"] >= 0.97

        second = score(tmp_path / "lake", model, output=tmp_path / "out2", workspace=tmp_path / "ws2", **keys)
        assert c.get_run(second.run_id).data.tags["bertflow.onnx_source"] == tag
        folder = next((tmp_path / "ws2" / "score" / ".onnx").iterdir())
        assert (folder / "model-int8.onnx").is_file() and not (folder / "model.onnx").exists()  # fetched, not exported
        got, ref = read_scored(tmp_path / "out2").sort_by("id"), read_scored(tmp_path / "out1").sort_by("id")
        assert got["label"].equals(ref["label"]) and got["score"].equals(ref["score"])  # the same int8 model

        broken = onnx.load(str(folder / "model-int8.onnx"))
        for init in broken.graph.initializer:
            if init.name.endswith("_quantized"):
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
        onnx.save(broken, str(folder / "model-int8.onnx"))
        with pytest.raises(ParityError, match="agreement with torch fp32"):
            score(tmp_path / "lake", model, output=tmp_path / "out3", workspace=tmp_path / "ws2", **keys)
        refused = c.search_runs([c.get_run(first.run_id).info.experiment_id], "tags.`bertflow.stage` = 'score'",
                                order_by=["attribute.start_time DESC"])[0]
        assert refused.info.status == "FAILED" and refused.data.metrics["parity_agreement"] < 0.97
    finally:
        tracking.use_store(before)
