"""``score.backend: torch-bf16``: torch with bf16 weights on the CPU, behind the same parity gate as ONNX.

On a CPU without native bf16 the backend is refused; the tests that score say the CPU has it
(``cpu_has_native_bf16``), which only changes the speed: emulated bf16 computes the same numbers.
"""

from __future__ import annotations


import numpy as np
import pytest

from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.score.onnx_export import model_folder
from bertflow.bert_core.score.stage import run
from bertflow.bert_core.stageio import model_dir_digest, read_manifest
from tests.helpers import build_tiny_head, head_lake, read_scored, score_cfg, topic_rows, write_parquet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr("bertflow.bert_core.cpu_bf16.cpu_has_native_bf16", lambda: True)


def test_bf16_passes_the_gate_scores_like_fp32_and_runs_exactly_once(native_bf16, minilm_classifier, tmp_path):
    texts = [t for t, _ in topic_rows(100, seed=4)] + [None]
    lake, cache = tmp_path / "in.parquet", tmp_path / "cache"
    write_parquet(lake, {"id": list(range(101)), "text": texts})
    first = run(score_cfg(lake, backend="torch-bf16", probabilities=True), minilm_classifier, tmp_path / "out",
                cache_dir=cache)
    m = first.metrics
    assert m["rows_in"] == 101 and m["rows_scored"] == 100 and m["rows_error"] == 1
    assert m["parity_agreement"] >= 0.97 and 0 < m["parity_max_abs_delta"] < 0.1
    manifest = read_manifest(tmp_path / "out", "score")
    assert manifest["backend"] == "torch-bf16" and manifest["dtype"] == "bfloat16"
    assert manifest["parity"]["units"] == 100 and manifest["parity"]["source"].startswith("the input")
    verdicts = list(model_folder(cache, model_dir_digest(minilm_classifier)).glob("parity-torch-bf16-*.json"))
    assert len(verdicts) == 1  # no ONNX file: the figures sit in the model's cache folder
    run(score_cfg(lake, probabilities=True), minilm_classifier, tmp_path / "fp32")
    got, ref = read_scored(tmp_path / "out").sort_by("id"), read_scored(tmp_path / "fp32").sort_by("id")
    assert np.mean([a == b for a, b in zip(got["label"].to_pylist()[:100], ref["label"].to_pylist()[:100])]) >= 0.97
    diff = np.abs(np.stack(got["probabilities"].to_pylist()[:100]) - np.stack(ref["probabilities"].to_pylist()[:100]))
    assert 1e-4 < diff.max() < 0.1  # bf16 arithmetic: close to fp32, not equal
    again = run(score_cfg(lake, backend="torch-bf16", probabilities=True), minilm_classifier, tmp_path / "out",
                cache_dir=cache)
    assert again.metrics["files_skipped"] == 1 and again.metrics["files_scored"] == 0
    stamp = verdicts[0].stat().st_mtime_ns
    elsewhere = run(score_cfg(lake, backend="torch-bf16"), minilm_classifier, tmp_path / "out2", cache_dir=cache)
    assert elsewhere.metrics["files_scored"] == 1 and verdicts[0].stat().st_mtime_ns == stamp  # figures reused


@pytest.mark.parametrize("head", ["token", "qa"])
def test_token_and_qa_heads_on_bf16(native_bf16, head, tmp_path):
    model = build_tiny_head(tmp_path / "model", head)
    head_lake(tmp_path / "in.parquet", head)
    common = dict(max_length=24, stride=4) if head == "qa" else dict(max_length=16, stride=4)
    result = run(score_cfg(tmp_path / "in.parquet", backend="torch-bf16", min_agreement=0.5, **common), model,
                 tmp_path / "bf16", cache_dir=tmp_path / "cache")
    assert result.metrics["rows_scored"] == 40 and result.details["parity"]["units"] > 40  # tokens / answer windows
    assert result.metrics["parity_agreement"] >= 0.5
    run(score_cfg(tmp_path / "in.parquet", **common), model, tmp_path / "fp32")
    got, ref = read_scored(tmp_path / "bf16").sort_by("id"), read_scored(tmp_path / "fp32").sort_by("id")
    assert got["id"].to_pylist() == list(range(40)) and got["error"].to_pylist() == ref["error"].to_pylist()
    assert read_manifest(tmp_path / "bf16", "score")["dtype"] == "bfloat16"


def test_bf16_needs_a_cpu_with_native_bf16(monkeypatch, tiny_model, tmp_path):
    from bertflow.bert_core.score.config import ScoreConfig

    with pytest.raises(ConfigError, match="score.backend.*torch-bf16 runs on the CPU.*score.device is 'cuda'"):
        ScoreConfig(device="cuda", backend="torch-bf16")
    monkeypatch.setattr("bertflow.bert_core.cpu_bf16.cpu_has_native_bf16", lambda: False)
    write_parquet(tmp_path / "in.parquet", {"id": [0, 1], "text": ["alice went to paris", "bob"]})
    with pytest.raises(ConfigError, match="torch-bf16: this CPU has no native bf16"):
        run(score_cfg(tmp_path / "in.parquet", backend="torch-bf16"), tiny_model, tmp_path / "out",
            cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "out").glob("*.parquet"))  # nothing scored
