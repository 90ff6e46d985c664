"""Distillation: student construction, the loss, the stage's guards, and a tiny teacher -> registered student
through the real flow (Prefect test harness, MLflow on SQLite in the workspace)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertflow.bert_core.distill.config import DistillConfig, StudentShape
from bertflow.bert_core.distill.data import read_unlabeled
from bertflow.bert_core.distill.loss import NO_GOLD, DistillLoss, soft_label_kl
from bertflow.bert_core.distill.student import every_kth_layer, from_config, slice_teacher
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.encode import IGNORE
from tests.helpers import build_tiny_bert, build_tiny_head, ner_rows, sentiment_rows, write_conll, write_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bert(layers: int, labels: int = 3, token: bool = False):
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return (BertForTokenClassification if token else BertForSequenceClassification)(config).eval()


def test_every_kth_layer_keeps_the_top_layer():
    assert every_kth_layer(6, 3) == [1, 3, 5]
    assert every_kth_layer(12, 6) == [1, 3, 5, 7, 9, 11]
    assert every_kth_layer(6, 4) == [2, 3, 4, 5]  # k = 1: the top four
    assert every_kth_layer(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="deeper than its teacher"):
        every_kth_layer(2, 3)


def test_sliced_student_copies_the_chosen_layers():
    teacher = _bert(4)
    ids = torch.randint(5, 60, (3, 10))
    whole = slice_teacher(teacher, [0, 1, 2, 3]).eval()
    assert torch.allclose(whole(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)
    student = slice_teacher(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t_layers, s_layers = teacher.bert.encoder.layer, student.bert.encoder.layer
    assert torch.equal(s_layers[0].output.dense.weight, t_layers[1].output.dense.weight)
    assert torch.equal(s_layers[1].attention.self.query.weight, t_layers[3].attention.self.query.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        slice_teacher(teacher, [1, 7])
    with pytest.raises(ConfigError, match="increasing"):
        slice_teacher(teacher, [3, 1])


def test_student_from_a_config_has_the_asked_shape():
    teacher = _bert(2)
    student = from_config(teacher, StudentShape(hidden_size=8, intermediate_size=16).overrides())
    assert (student.config.hidden_size, student.config.intermediate_size) == (8, 16)
    assert student.config.num_hidden_layers == 2 and student.config.num_labels == 3  # the rest: the teacher's
    with pytest.raises(ConfigError, match="hidden_size 10 is not a multiple of num_attention_heads 4"):
        from_config(teacher, StudentShape(hidden_size=10, num_attention_heads=4).overrides())


def test_soft_label_kl_is_zero_only_when_the_student_matches():
    t = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert float(soft_label_kl(t.clone(), t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_label_kl(torch.zeros_like(t), t, 2.0)) > 0.1


def test_loss_uses_gold_labels_only_where_there_are_some():
    teacher, student = _bert(2), _bert(1)
    ids = torch.randint(5, 60, (4, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gold = torch.tensor([0, 1, 2, 0])
    unlabeled = torch.full((4,), NO_GOLD)
    def value(alpha: float, labels: torch.Tensor) -> float:
        return DistillLoss(teacher, alpha=alpha)(student, {**batch, "labels": labels}).item()

    kl_only = value(1.0, gold)
    assert value(1.0, unlabeled) == pytest.approx(kl_only)
    mixed, no_gold = value(0.5, gold), value(0.5, unlabeled)
    assert no_gold == pytest.approx(0.5 * kl_only) and mixed != pytest.approx(no_gold)
    # Token models: only positions with a label (gold or NO_GOLD) count; IGNORE positions do not.
    t_tok, s_tok = _bert(2, 5, token=True), _bert(1, 5, token=True)
    labels = torch.full((4, 8), IGNORE)
    labels[:, 1:4] = NO_GOLD
    loss = DistillLoss(t_tok, alpha=0.5, hidden_weight=1.0, layer_map=[1])(s_tok, {**batch, "labels": labels})
    assert torch.isfinite(loss) and loss.item() > 0


def test_unlabeled_text_from_parquet_and_text_files(tmp_path):
    pq.write_table(pa.table({"body": ["one text", None, "  ", "two text"]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    texts = read_unlabeled([str(tmp_path / "a.parquet"), str(tmp_path / "b.txt")], "body", None, 0)
    assert texts == ["one text", "two text", "line one", "line two"]
    assert len(read_unlabeled([str(tmp_path / "*.parquet")], "body", 1, 0)) == 1
    with pytest.raises(InputError, match="no column 'text'"):
        read_unlabeled([str(tmp_path / "a.parquet")], "text", None, 0)
    with pytest.raises(InputError, match="no file matches"):
        read_unlabeled([str(tmp_path / "missing-*.parquet")], "text", None, 0)


def test_config_guards():
    with pytest.raises(ConfigError, match="student_model is not set"):
        DistillConfig(student_init="checkpoint")
    with pytest.raises(ConfigError, match="distill.temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError, match="distill.teacher_layers is set but distill.student_init is 'config'"):
        DistillConfig(student_init="config", teacher_layers=[0, 2])
    with pytest.raises(ConfigError, match="distill.student_config is set but distill.student_init is 'teacher'"):
        DistillConfig(student_config={"hidden_size": 32})


def test_stage_refuses_a_qa_teacher_and_labels_it_does_not_know(tmp_path):
    from bertflow.bert_core.distill.stage import run

    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(30, seed=0))
    data = FinetuneConfig(train_path=str(train), device="cpu", max_length=32)
    qa = build_tiny_head(tmp_path / "qa", "qa")
    with pytest.raises(InputError, match="is a qa model: distillation takes a sequence or token classifier"):
        run(DistillConfig(), data, qa, tmp_path / "out")
    ner = build_tiny_head(tmp_path / "ner", "token")
    with pytest.raises(InputError, match="is a token model but finetune.task is 'sequence'"):
        run(DistillConfig(), data, ner, tmp_path / "out")
    tagged = write_csv(tmp_path / "tagged.csv", ["text", "label"], [("alice walked", "O B-MISC")] * 10)
    with pytest.raises(InputError, match="label 'B-MISC' of the training data is not one the teacher"):
        run(DistillConfig(), FinetuneConfig(task="token", train_path=str(tagged), device="cpu"), ner, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_token_teacher_distills_into_a_token_student(tmp_path):
    """A token classifier distils too: the KL runs over each word's first piece, unlabeled text included."""
    from bertflow.bert_core.distill.stage import run

    teacher = build_tiny_head(tmp_path / "teacher", "token", layers=2)
    train = write_conll(tmp_path / "train.conll", ner_rows(60, seed=1))
    (tmp_path / "extra.txt").write_text("\n".join(" ".join(w) for w, _ in ner_rows(20, seed=2)), encoding="utf-8")
    data = FinetuneConfig(task="token", train_path=str(train), device="cpu", max_length=32, valid_fraction=0.25)
    cfg = DistillConfig(student_layers=1, epochs=1, unlabeled=[str(tmp_path / "extra.txt")], speed_rows=0,
                        hidden_weight=0.5)
    result = run(cfg, data, teacher, tmp_path / "out", teacher_ref="tiny-ner/4")
    m = result.metrics
    assert m["student_layers"] == 1 and m["unlabeled_examples"] == 20 and result.details["layer_map"] == [1]
    assert 0.0 <= m["agreement_with_teacher"] <= 1.0 and "entity_f1" in m and "teacher_eval_metric" in m
    meta = json.loads((tmp_path / "out" / "model" / "bertflow_finetune.json").read_text(encoding="utf-8"))
    assert meta["task"] == "token" and meta["distilled_from"] == "tiny-ner/4"


@pytest.fixture(scope="module")
def distilled(prefect_harness, tmp_path_factory):
    """A 4-layer tiny teacher fine-tuned on keyword sentiment, then a 2-layer student, in one pipeline run."""
    from bertflow.api import run_pipeline

    root = tmp_path_factory.mktemp("distill")
    base = build_tiny_bert(root / "base", layers=4)
    train = write_csv(root / "train.csv", ["text", "label"], sentiment_rows(240, seed=0))
    pq.write_table(pa.table({"text": [t for t, _ in sentiment_rows(60, seed=5)]}), root / "extra.parquet")
    overrides = [f"finetune.train_path={train}", f"finetune.base_model={base}", "finetune.epochs=3",
                 "finetune.lr=0.002", "finetune.max_length=32", "finetune.num_threads=1",
                 "finetune.registered_model_name=tiny-sentiment", "distill.student_layers=2", "distill.epochs=2",
                 "distill.lr=0.002", f"distill.unlabeled={root / 'extra.parquet'}", "distill.speed_rows=16"]
    return run_pipeline("tiny", stages=["finetune", "distill"], workspace=root / "ws", overrides=overrides), overrides


def test_distilled_student_is_registered_with_its_teacher(distilled):
    from bertflow.tasks import tracking

    distilled, _ = distilled
    teacher, student = distilled.stages["finetune"], distilled.stages["distill"]
    reg = student.registry
    assert teacher.registry.version == "1" and reg.name == "tiny-sentiment" and reg.version == "2"
    m = student.metrics
    assert m["student_layers"] == 2 and m["teacher_layers"] == 4
    assert m["student_parameters"] < m["teacher_parameters"] and m["compression"] > 1
    assert m["unlabeled_examples"] == 60 and m["train_examples"] == teacher.metrics["train_examples"]
    assert m["teacher_eval_metric"] == pytest.approx(teacher.metrics["eval_metric"], abs=1e-6)
    assert m["agreement_with_teacher"] > 0.6  # chance for 3 balanced labels is ~1/3
    assert m["student_rows_per_s"] > 0 and m["teacher_rows_per_s"] > 0
    client = tracking.client(distilled.tracking_uri)
    version = client.get_model_version(reg.name, reg.version)
    assert version.tags["distilled_from"] == "tiny-sentiment/1"
    assert version.tags["bertflow.agreement_with_teacher"] == str(m["agreement_with_teacher"])
    assert str(client.get_model_version_by_alias(reg.name, "candidate").version) == "2"
    # Promoted only by the rule every candidate meets: beat the champion on the same evaluation set.
    champion = client.get_model_version_by_alias(reg.name, "champion").version
    assert str(champion) == ("2" if m["eval_metric"] > teacher.metrics["eval_metric"] else "1")
    assert reg.promoted == (str(champion) == "2")
    run = client.get_run(student.run_id)
    assert run.data.params["distill.temperature"] == "2.0" and run.data.tags["bertflow.stage"] == "distill"
    assert {"agreement_with_teacher", "student_rows_per_s", "train_loss", "valid_accuracy"} <= set(run.data.metrics)
    exported = json.loads((Path(student.details["model_dir"]) / "config.json").read_text(encoding="utf-8"))
    assert exported["num_hidden_layers"] == 2


def test_rerun_reuses_the_student(distilled):
    """Same teacher version, data and settings: the student is not trained (nor registered) again."""
    import bertflow

    result, overrides = distilled
    again = bertflow.distill(None, "tiny", workspace=result.workspace, overrides=overrides)  # the API's entry
    assert again.reused and again.registry.version == "2" and again.run_id != result.stages["distill"].run_id


def test_cli_distill_without_a_teacher_names_the_missing_stage(prefect_harness, tmp_path, monkeypatch, capsys):
    """``bertflow distill`` on a workspace with no fine-tuned model: one error line, exit status 2."""
    import sys

    from bertflow.flows.cli import main

    monkeypatch.setattr(sys, "argv", ["bertflow", "distill", "-c", "tiny", "-w", str(tmp_path / "ws"), "--layers", "1",
                                      "--quiet"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "run the 'finetune' stage first" in err and "Traceback" not in err
