"""MLflow registry helpers against a real MLflow SQLite store in a temp dir.

Log fine-tuned HF directories as pyfunc models (from code) linked to (finished) runs, register them
with alias ``candidate``, promote only on a better score measured on the same evaluation
set, load them back through pyfunc, and resolve URIs to local HF directories.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.predict import Predictor
from bertflow.tasks import registry, tracking
from tests.helpers import build_tiny_bert

NAME = "test-clf"
TEXTS = ["the cat sat great", "awful river", "okay window", "zanderbrook walked"]


def _hf_classifier(base: Path, dst: Path, seed: int, text_pair: bool = False) -> Path:
    """A (randomly headed) sequence classifier exported exactly as the finetune stage exports it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertflow.bert_core.finetune.export import export_model

    torch.manual_seed(seed)
    names = ["neg", "neu", "pos"]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=3, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    meta = {"task": "sequence", "max_length": 64, "label_names": names, "text_pair": text_pair}
    return export_model(model, AutoTokenizer.from_pretrained(str(base)), dst, meta, base_dir=base)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    tracking.use_store(uri)  # not mlflow.set_*_uri: they export the URI, leaking it to later tests' pipelines
    client = tracking.client(uri)
    exp = client.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
    base = build_tiny_bert(root / "bert")
    yield {"uri": uri, "client": client, "exp": exp, "root": root, "base": base}
    tracking.use_store(before)


def _finished_run(store, metrics: dict[str, float] | None = None) -> str:
    c = store["client"]
    run_id = c.create_run(store["exp"]).info.run_id
    for k, v in (metrics or {}).items():
        c.log_metric(run_id, k, v)
    c.set_terminated(run_id)  # the lead's stage runs are finished before the model is logged
    return run_id


@pytest.fixture(scope="module")
def registered(store):
    """Five versions, promoted in turn: 0.70 (first), 0.60 (worse), 0.90 (better),
    0.99 on another evaluation set, 0.95 read from the run's metric."""
    c = store["client"]
    decisions, runs, uris = {}, {}, {}
    plan = [
        (1, 0.70, "digest-A"),
        (2, 0.60, "digest-A"),
        (3, 0.90, "digest-A"),
        (4, 0.99, "digest-B"),
        (5, None, "digest-A"),
    ]
    for n, score, digest in plan:
        hf = _hf_classifier(store["base"], store["root"] / f"hf{n}", seed=n)
        runs[n] = _finished_run(store, {"eval_metric": 0.95} if score is None else None)
        uris[n] = registry.log_model(hf, runs[n], tracking_uri=store["uri"])
        version = registry.register(uris[n], NAME, client=c)
        assert version == n
        assert int(c.get_model_version_by_alias(NAME, "candidate").version) == n
        kwargs = {} if score is None else {"score": score}
        decisions[n] = registry.promote(NAME, version, "eval_metric", digest, c, **kwargs)
        decisions[n]["champion_after"] = int(c.get_model_version_by_alias(NAME, "champion").version)
    return {"decisions": decisions, "runs": runs, "uris": uris}


def test_logged_model_is_linked_to_its_run_with_a_signature(store, registered):
    c = store["client"]
    uri = registered["uris"][1]
    assert uri.startswith("models:/m-")
    logged = c.get_logged_model(uri.removeprefix("models:/"))
    assert logged.source_run_id == registered["runs"][1]
    assert logged.experiment_id == store["exp"]  # not MLflow's default experiment
    assert logged.artifact_location.startswith((store["root"] / "artifacts").as_uri())
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == ["label", "score", "probabilities", "error"]
    mv = c.get_model_version(NAME, "1")
    assert mv.run_id == registered["runs"][1]


def test_promotion_only_when_better_on_the_same_evaluation_set(registered):
    d = registered["decisions"]
    assert d[1]["promoted"] and d[1]["champion_after"] == 1 and d[1]["champion_score"] is None
    assert not d[2]["promoted"] and d[2]["champion_after"] == 1  # worse: champion kept
    assert (d[2]["candidate_score"], d[2]["champion_score"]) == (0.60, 0.70)
    assert "does not beat" in d[2]["reason"]
    assert d[3]["promoted"] and d[3]["champion_after"] == 3  # better: champion moves
    assert (d[3]["candidate_score"], d[3]["champion_score"], d[3]["champion_version"]) == (0.90, 0.70, "1")
    assert not d[4]["promoted"] and d[4]["champion_after"] == 3  # higher, but on another evaluation set
    assert "different evaluation set" in d[4]["reason"]
    assert d[5]["promoted"] and d[5]["candidate_score"] == 0.95 and d[5]["champion_after"] == 5  # from the run


def test_scores_and_decisions_are_recorded_as_version_tags(store, registered):
    c = store["client"]
    tags2 = c.get_model_version(NAME, "2").tags
    assert float(tags2["eval_metric"]) == 0.60 and tags2["eval_digest"] == "digest-A"
    assert tags2["promotion.decision"] == "kept"
    assert float(tags2["promotion.candidate_score"]) == 0.60 and float(tags2["promotion.champion_score"]) == 0.70
    assert tags2["promotion.champion_version"] == "1"
    tags3 = c.get_model_version(NAME, "3").tags
    assert tags3["promotion.decision"] == "promoted" and float(tags3["promotion.champion_score"]) == 0.70


def test_pyfunc_loads_back_and_predicts_like_the_hf_directory(store, registered):
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["label", "score", "probabilities", "error"] and len(out) == len(TEXTS)
    assert out["error"].isna().all()
    expected = Predictor(store["root"] / "hf5", device="cpu").predict(TEXTS)
    assert out["label"].tolist() == [p.label for p in expected]
    assert out["score"].tolist() == pytest.approx([p.score for p in expected], abs=1e-6)


def test_a_pair_model_takes_a_text_pair_column(store):
    import pandas as pd

    hf = _hf_classifier(store["base"], store["root"] / "pair", seed=9, text_pair=True)
    uri = registry.log_model(hf, _finished_run(store), tracking_uri=store["uri"])
    assert mlflow.models.get_model_info(uri).signature.inputs.input_names() == ["text", "text_pair"]
    pairs = list(reversed(TEXTS))
    out = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS, "text_pair": pairs}))
    expected = Predictor(hf, device="cpu").predict(TEXTS, pairs)
    assert out["label"].tolist() == [p.label for p in expected]
    assert out["score"].tolist() == pytest.approx([p.score for p in expected], abs=1e-6)
    alone = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS, "text_pair": TEXTS}))
    assert alone["score"].tolist() != out["score"].tolist()  # the second segment is read


def test_resolve_model_dir_for_paths_and_uris(store, registered, tmp_path):
    hf1 = store["root"] / "hf1"
    assert registry.resolve_model_dir(hf1, tmp_path) == hf1  # a local HF dir is used as is
    expected = {n: [p.label for p in Predictor(store["root"] / f"hf{n}", device="cpu").predict(TEXTS)] for n in (1, 5)}
    cases = {
        f"models:/{NAME}@champion": 5,
        f"models:/{NAME}/1": 1,
        f"runs:/{registered['runs'][1]}/model": 1,
        registered["uris"][5]: 5,
    }
    for uri, n in cases.items():
        got = registry.resolve_model_dir(uri, tmp_path / "cache")
        assert got.name == registry.HF_ARTIFACT and (got / "config.json").is_file(), uri
        assert [p.label for p in Predictor(got, device="cpu").predict(TEXTS)] == expected[n], uri
    again = registry.resolve_model_dir(f"models:/{NAME}@champion", tmp_path / "cache")
    assert again == registry.resolve_model_dir(f"models:/{NAME}/5", tmp_path / "cache")  # alias pinned, cached
    assert registry.resolve_model_dir(again.parent.parent, tmp_path) == again  # a downloaded MLflow model dir
    with pytest.raises(InputError, match="no alias 'nope'"):
        registry.resolve_model_dir(f"models:/{NAME}@nope", tmp_path / "cache")
    c = store["client"]
    assert registry.pin(c, f"models:/{NAME}@champion") == (f"models:/{NAME}/5", f"{NAME}/5")
    assert registry.pin(c, f"models:/{NAME}/1") == (f"models:/{NAME}/1", f"{NAME}/1")
    for other in (registered["uris"][5], f"runs:/{registered['runs'][1]}/model", str(hf1)):
        assert registry.pin(c, other) == (other, None)
    with pytest.raises(InputError, match="not a Hugging Face model directory"):
        registry.resolve_model_dir(tmp_path, tmp_path / "cache")
