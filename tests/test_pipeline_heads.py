"""The token and qa heads through the real flow: fine-tune -> MLflow registry -> bulk scoring from a models:/ URI.

Real Prefect (the test harness API), MLflow on SQLite in the workspace, tiny BERT models.
"""

from __future__ import annotations

import pytest

from bertflow.api import run_pipeline, score
from bertflow.tasks import tracking
from tests.helpers import build_tiny_bert, ner_rows, read_scored, squad_articles, write_conll, write_parquet, write_squad

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


def _finetune_and_score(tmp_path, base, task: str, train: str, lake, name: str, score_keys: list[str]):
    overrides = [f"finetune.task={task}", f"finetune.train_path={train}", f"finetune.base_model={base}",
                 "finetune.epochs=2", "finetune.device=cpu", "finetune.num_threads=1", "finetune.max_length=32",
                 f"finetune.registered_model_name={name}", f"score.input={lake}", "score.device=cpu",
                 "score.max_length=32", *score_keys]
    return run_pipeline("tiny", stages=["finetune", "score"], workspace=tmp_path / "ws", overrides=overrides)


def test_token_model_is_registered_and_scores_entities(prefect_harness, base, tmp_path):
    train = write_conll(tmp_path / "train.conll", ner_rows(120, seed=1))
    texts = [" ".join(words) for words, _ in ner_rows(20, seed=2)] + [None]
    write_parquet(tmp_path / "lake" / "part-0.parquet", {"id": list(range(21)), "text": texts})
    result = _finetune_and_score(tmp_path, base, "token", train, tmp_path / "lake", "tiny-ner", ["score.stride=8"])
    reg = result.stages["finetune"].registry
    client = tracking.client(result.tracking_uri)
    assert str(client.get_model_version_by_alias(reg.name, "candidate").version) == reg.version
    assert client.get_logged_model(reg.model_uri.removeprefix("models:/")).tags["bertflow.task"] == "token"
    rows = read_scored(tmp_path / "ws" / "score").sort_by("id").to_pylist()
    assert len(rows) == 21 and rows[-1]["error"] == "null_text" and rows[-1]["entities"] is None
    assert all(isinstance(r["entities"], list) for r in rows[:20])
    # The registered version scores the same lake from its models:/ URI.
    again = score(tmp_path / "lake", f"models:/{reg.name}@candidate", output=tmp_path / "by-uri",
                  workspace=tmp_path / "ws", overrides=["score.device=cpu", "score.max_length=32", "score.stride=8"])
    assert again.metrics["rows_scored"] == 20
    assert read_scored(tmp_path / "by-uri").sort_by("id")["entities"].to_pylist() == [r["entities"] for r in rows]


def test_qa_model_is_registered_and_scores_answers(prefect_harness, base, tmp_path):
    articles = squad_articles(12, seed=3, words=(3, 12))
    train = write_squad(tmp_path / "train.json", articles)
    qas = [(qa["question"], p["context"]) for a in articles[:3] for p in a["paragraphs"] for qa in p["qas"]]
    write_parquet(tmp_path / "lake" / "part-0.parquet", {"id": list(range(len(qas) + 1)),
                                                         "question": [q for q, _ in qas] + ["who?"],
                                                         "context": [c for _, c in qas] + [None]})
    result = _finetune_and_score(tmp_path, base, "qa", train, tmp_path / "lake", "tiny-qa",
                                 ["finetune.doc_stride=8", "score.stride=8"])
    ft = result.stages["finetune"]
    assert {"exact_match", "f1", "eval_metric"} <= set(ft.metrics)
    client = tracking.client(result.tracking_uri)
    assert str(client.get_model_version_by_alias(ft.registry.name, "candidate").version) == ft.registry.version
    assert client.get_logged_model(ft.registry.model_uri.removeprefix("models:/")).tags["bertflow.task"] == "qa"
    rows = read_scored(tmp_path / "ws" / "score").sort_by("id").to_pylist()
    assert len(rows) == len(qas) + 1 and rows[-1]["error"] == "null_context" and rows[-1]["answer"] is None
    for (question, context), r in zip(qas, rows):
        assert r["answer"] == context[r["answer_start"]:r["answer_end"]] and 0 < r["score"] <= 1
