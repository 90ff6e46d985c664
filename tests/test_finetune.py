"""End-to-end fine-tuning on tiny synthetic tasks with a tiny BERT, and a smoke run on real MiniLM.

Every run goes through ``bert_core.finetune.stage.run`` (what the CLI and Prefect call) and
is checked through the exported directory with the Hugging Face Auto classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.predict import Predictor
from bertflow.bert_core.finetune.stage import run
from bertflow.bert_core.stageio import read_manifest
from tests.helpers import build_tiny_bert, ner_rows, pair_rows, sentiment_rows, write_conll, write_csv

# One torch thread: the tiny model gains nothing from two, and other test runs may hold the cores.
FAST = dict(
    epochs=12, batch_size=16, lr=2e-3, valid_fraction=0.2, device="cpu", early_stopping_patience=4, num_threads=1
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def seq_run(tiny_bert, tmp_path_factory):
    """Three-class keyword task ("great" -> pos, "awful" -> neg, "okay" -> neu), validation split off."""
    root = tmp_path_factory.mktemp("seq")
    train = write_csv(root / "train.csv", ["text", "label"], sentiment_rows(300, seed=0))
    cfg = FinetuneConfig(task="sequence", train_path=str(train), **FAST)
    logged = []
    result = run(cfg, tiny_bert, root / "out", on_metrics=lambda s, m: logged.append((s, m)))
    return cfg, result, logged


@pytest.fixture(scope="module")
def ner_run(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    train = write_conll(root / "train.conll", ner_rows(300, seed=1))
    valid = write_conll(root / "valid.conll", ner_rows(80, seed=2))
    cfg = FinetuneConfig(task="token", train_path=str(train), valid_path=str(valid), **FAST)
    return cfg, run(cfg, tiny_bert, root / "out")


def test_sequence_classification_learns_the_keyword_task(seq_run):
    _, result, _ = seq_run
    assert result.stage == "finetune"
    assert result.metrics["accuracy"] >= 0.8  # chance is 1/3
    assert result.metrics["eval_metric"] == result.metrics["accuracy"]
    assert result.metrics["macro_f1"] >= 0.75
    assert result.metrics["train_examples"] == 240 and result.metrics["valid_examples"] == 60
    assert 1 <= result.metrics["best_epoch"] <= result.metrics["epochs_run"] <= FAST["epochs"]
    assert set(result.details["per_class"]) == {"neg", "neu", "pos"}
    assert result.details["label_map"] == {"neg": 0, "neu": 1, "pos": 2}


def test_sequence_outputs_layout(seq_run):
    cfg, result, logged = seq_run
    out = Path(result.path)
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png", "manifest.json", "metrics.json", "model", "predictions.parquet"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.details["confusion_png"] == str(out / "confusion_matrix.png")
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["accuracy"] == result.metrics["accuracy"]
    assert np.array(report["confusion_matrix"]).sum() == 60
    assert len(report["history"]) == result.metrics["epochs_run"]
    manifest = read_manifest(out, "finetune")
    assert manifest["stage"] == "finetune" and manifest["config"]["lr"] == cfg.lr
    assert manifest["eval_set_digest"] == result.details["eval_set_digest"]
    assert any("train_loss" in m for _, m in logged) and any("valid_accuracy" in m for _, m in logged)
    # the best epoch's weights are the ones kept: its validation accuracy is the reported one
    best = report["history"][int(result.metrics["best_epoch"]) - 1]
    assert best["accuracy"] == result.metrics["accuracy"] == max(h["accuracy"] for h in report["history"])


def test_export_loads_with_auto_classes_and_predicts_the_same(seq_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, result, _ = seq_run
    model_dir = result.details["model_dir"]
    preds = pq.read_table(Path(result.path) / "predictions.parquet").to_pylist()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}  # label map round trip
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    texts = [r["text"] for r in preds]
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, dim=-1)
    labels = [model.config.id2label[i] for i in probs.argmax(-1).tolist()]
    assert labels == [r["pred"] for r in preds]
    np.testing.assert_allclose(probs.max(-1).values.numpy(), [r["score"] for r in preds], atol=1e-5)
    # and through our own predict module
    ours = Predictor(model_dir, device="cpu").predict(texts)
    assert [p.label for p in ours] == labels
    assert sum(r["correct"] for r in preds) / len(preds) == pytest.approx(result.metrics["accuracy"])


def test_sentence_pairs_binary(tiny_bert, tmp_path):
    """Label 1 iff the *second* segment holds the keyword: only learnable by reading the pair."""
    train = write_csv(tmp_path / "train.csv", ["a", "b", "y"], pair_rows(300, seed=3))
    cfg = FinetuneConfig(task="sequence", train_path=str(train), text_column="a", text_pair_column="b",
                         label_column="y", **FAST)
    result = run(cfg, tiny_bert, tmp_path / "out")
    assert result.metrics["accuracy"] >= 0.8
    assert result.details["label_map"] == {"0": 0, "1": 1}
    preds = pq.read_table(Path(result.path) / "predictions.parquet")
    assert "text_pair" in preds.column_names
    predictor = Predictor(result.details["model_dir"], device="cpu")
    rows = preds.to_pylist()
    again = predictor.predict([r["text"] for r in rows], [r["text_pair"] for r in rows])
    assert [p.label for p in again] == [r["pred"] for r in rows]


def test_token_classification_learns_entities(ner_run):
    _, result = ner_run
    assert result.metrics["entity_f1"] >= 0.8
    assert result.metrics["eval_metric"] == result.metrics["entity_f1"]
    assert result.metrics["token_accuracy"] >= 0.9
    assert set(result.details["per_class"]) == {"PER", "LOC"}
    assert result.details["confusion_png"] is None
    assert set(result.details["label_map"]) == {"B-LOC", "B-PER", "I-LOC", "I-PER", "O"}


def test_piece_level_figure_is_what_simple_aggregation_reaches(ner_run):
    """Trained on every piece (the default), the stage also reports entity figures over every piece:
    exactly the F1 of the spans transformers' pipeline(aggregation_strategy="simple") finds in the
    validation sentences written out as text, which reads the model piece by piece."""
    from transformers import pipeline

    from bertflow.bert_core.finetune.metrics import get_entities

    _, result = ner_run
    model_dir = result.details["model_dir"]
    rows = pq.read_table(Path(result.path) / "predictions.parquet").to_pylist()
    pipe = pipeline("token-classification", model=model_dir, tokenizer=model_dir, aggregation_strategy="simple",
                   device="cpu")
    assert any(len(pipe.tokenizer.tokenize(w)) > 1 for r in rows for w in r["words"])  # some words have later pieces
    gold, found = [], []
    for r in rows:
        starts = np.cumsum([0] + [len(w) + 1 for w in r["words"]])
        gold.append({(t, int(starts[s]), int(starts[e]) + len(r["words"][e])) for t, s, e in get_entities(r["tags"])})
        found.append({(e["entity_group"], e["start"], e["end"]) for e in pipe(" ".join(r["words"]))})
    tp, n_pred, n_gold = sum(len(g & f) for g, f in zip(gold, found)), sum(map(len, found)), sum(map(len, gold))
    assert result.metrics["piece_entity_f1"] == pytest.approx(2 * tp / (n_pred + n_gold), abs=1e-9)
    assert result.metrics["piece_entity_precision"] == pytest.approx(tp / n_pred, abs=1e-9)
    assert json.loads((Path(result.path) / "metrics.json").read_text())["metrics"]["piece_entity_f1"] == \
        result.metrics["piece_entity_f1"]


def test_token_export_predicts_the_same_per_word(ner_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    _, result = ner_run
    model_dir = result.details["model_dir"]
    rows = pq.read_table(Path(result.path) / "predictions.parquet").to_pylist()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    for r in rows[:20]:
        enc = tok(r["words"], is_split_into_words=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            ids = model(**enc).logits[0].argmax(-1).tolist()
        firsts, seen = [], set()
        for pos, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in seen:
                seen.add(w)
                firsts.append(model.config.id2label[ids[pos]])
        assert firsts == r["pred_tags"]
        assert len(r["tags"]) == len(r["pred_tags"]) == len(r["words"])
    predictor = Predictor(model_dir, device="cpu")
    assert predictor.predict_words([r["words"] for r in rows]) == [r["pred_tags"] for r in rows]
    one = predictor.predict([" ".join(rows[0]["words"])])[0]
    assert list(one.tags) == rows[0]["pred_tags"]


def test_eval_digest_is_content_not_order(tiny_bert, tmp_path, seq_run):
    """The same evaluation set gives the same digest (promotion compares like with like)."""
    _, result, _ = seq_run
    rows = sentiment_rows(300, seed=0)
    from bertflow.bert_core.finetune.data import load_data

    cfg = FinetuneConfig(train_path=str(write_csv(tmp_path / "t.csv", ["text", "label"], rows[::-1])), **FAST)
    data = load_data(cfg)
    assert data.valid.subset(range(len(data.valid))[::-1]).digest() == data.valid.digest()
    other = FinetuneConfig(train_path=cfg.train_path, **{**FAST, "valid_fraction": 0.3})
    assert load_data(other).valid.digest() != data.valid.digest()
    assert result.details["eval_set_digest"] != load_data(other).valid.digest()


def test_max_steps_and_failed_run_keeps_previous_output(tiny_bert, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(60, seed=5))
    cfg = FinetuneConfig(train_path=str(train), **{**FAST, "max_steps": 3})
    result = run(cfg, tiny_bert, tmp_path / "out")
    assert result.metrics["steps"] == 3 and result.metrics["epochs_run"] == 1
    before = (tmp_path / "out" / "metrics.json").read_bytes()
    missing = FinetuneConfig(train_path=str(train), text_column="body", **FAST)
    with pytest.raises(InputError, match="no column 'body'"):
        run(missing, tiny_bert, tmp_path / "out")
    assert (tmp_path / "out" / "metrics.json").read_bytes() == before
    with pytest.raises(InputError, match="base model directory .* not found"):
        run(cfg, tmp_path / "no-such-model", tmp_path / "out2")


def test_minilm_checkpoint_loads_and_trains(minilm_dir, tmp_path):
    """The real pretrained MiniLM (a BertModel checkpoint) gets a head, takes two steps, exports."""
    rows = sentiment_rows(24, seed=4)
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    cfg = FinetuneConfig(train_path=str(train), epochs=1, max_steps=2, batch_size=8, max_length=32,
                         valid_fraction=0.25, device="cpu")
    result = run(cfg, minilm_dir, tmp_path / "out")
    assert result.metrics["steps"] == 2
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.details["model_dir"])
    assert model.config.hidden_size == 384 and model.config.num_labels == 3
    # the encoder weights came from the checkpoint, not a random init: the word embeddings match
    from safetensors.torch import load_file

    ckpt = load_file(str(Path(minilm_dir) / "model.safetensors"))
    key = next(k for k in ckpt if k.endswith("word_embeddings.weight"))
    moved = (model.bert.embeddings.word_embeddings.weight - ckpt[key]).abs().max().item()
    assert moved < 1e-2  # two small steps barely move them


def test_early_stopping_keeps_the_best_epochs_weights(tiny_bert, tmp_path):
    """A scripted validation metric: 0.5, 0.9, 0.6, 0.7 -> with patience 2 training stops after
    epoch 4 and the model holds exactly the weights it had after epoch 2."""
    from bertflow.bert_core.finetune.data import load_data
    from bertflow.bert_core.finetune.encode import encode_texts
    from bertflow.bert_core.finetune.evaluate import Evaluation
    from bertflow.bert_core.finetune.model import build_model, cpu_threads, load_tokenizer
    from bertflow.bert_core.finetune.train import train

    train_csv = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(40, seed=6))
    cfg = FinetuneConfig(train_path=str(train_csv), **{**FAST, "epochs": 10, "early_stopping_patience": 2})
    data = load_data(cfg)
    tok = load_tokenizer(tiny_bert)
    enc = encode_texts(tok, data.train.texts, None, data.train_ids, 64)
    model = build_model(tiny_bert, "sequence", data.label_names)
    scripted = iter([0.5, 0.9, 0.6, 0.7, 0.95, 0.99])
    snapshots = []

    def fake_eval(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        score = next(scripted)
        return Evaluation({"accuracy": score, "eval_metric": score}, {}, None, None)

    with cpu_threads(1):
        outcome = train(model, enc, fake_eval, cfg, torch.device("cpu"), None, tok.pad_token_id)
    assert (outcome.epochs_run, outcome.best_epoch, outcome.stop_reason) == (4, 2, "early_stopping")
    assert outcome.best_eval.headline == 0.9
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


def test_on_epoch_sees_every_epoch_and_can_stop_or_abort_training(tiny_bert, tmp_path):
    """``on_epoch`` gets each epoch's validation metrics; True stops with the best epoch kept, and an
    exception (a pruned sweep trial) aborts the run before anything is written."""
    train_csv = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(60, seed=9))
    cfg = FinetuneConfig(train_path=str(train_csv), **{**FAST, "epochs": 4, "early_stopping_patience": 0})
    seen = []

    def stop_after_two(epoch, metrics):
        seen.append((epoch, metrics["eval_metric"]))
        return epoch == 2

    result = run(cfg, tiny_bert, tmp_path / "stopped", on_epoch=stop_after_two)
    assert [e for e, _ in seen] == [1, 2]
    assert result.details["stop_reason"] == "on_epoch" and result.metrics["epochs_run"] == 2
    assert [h["eval_metric"] for h in result.details["history"]] == [m for _, m in seen]

    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        run(cfg, tiny_bert, tmp_path / "pruned", on_epoch=prune)
    assert not (tmp_path / "pruned").exists()


def test_autocast_path_recomputes_final_figures_in_fp32(tiny_bert, tmp_path, monkeypatch):
    """bf16 autocast for training and validation (``cpu_bf16`` here, ``bf16`` on a GPU): the reported
    figures and predictions come from an fp32 pass, so the export reproduces them."""
    from bertflow.bert_core.finetune import model as model_mod

    monkeypatch.setattr("bertflow.bert_core.cpu_bf16.cpu_has_native_bf16", lambda: True)  # emulated where it is not: slower, same
    calls = []
    real_autocast = model_mod.autocast

    def spy(device, dtype):
        calls.append(dtype)
        return real_autocast(device, dtype)

    monkeypatch.setattr("bertflow.bert_core.finetune.train.autocast", spy)
    monkeypatch.setattr("bertflow.bert_core.finetune.infer.autocast", spy)
    train_csv = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(90, seed=8))
    cfg = FinetuneConfig(train_path=str(train_csv), **{**FAST, "epochs": 2, "cpu_bf16": True})
    result = run(cfg, tiny_bert, tmp_path / "out")
    assert read_manifest(result.path, "finetune")["runtime"]["autocast"] == "torch.bfloat16"
    assert torch.bfloat16 in calls and None in calls  # bf16 while training and validating, fp32 at the end
    assert result.details["export_check"]["max_abs_diff"] < 1e-5  # fp32 figures: the export matches exactly
    rows = pq.read_table(Path(result.path) / "predictions.parquet").to_pylist()
    again = Predictor(result.details["model_dir"], device="cpu").predict([r["text"] for r in rows])
    assert [p.label for p in again] == [r["pred"] for r in rows]


def test_autocast_dtype_is_bf16_only_on_capable_cuda(monkeypatch):
    from bertflow.bert_core.finetune.model import autocast_dtype

    assert autocast_dtype(torch.device("cpu"), True) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda"), True) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda"), True) is None


def test_cpu_bf16_needs_a_cpu_with_native_bf16(monkeypatch):
    """Emulated bf16 trains slower than fp32: asking for it there is an error naming the setting."""
    from bertflow.bert_core.finetune import model as model_mod

    cpu = torch.device("cpu")
    monkeypatch.setattr("bertflow.bert_core.cpu_bf16.cpu_has_native_bf16", lambda: True)
    assert model_mod.autocast_dtype(cpu, False, cpu_bf16=True) is torch.bfloat16
    assert model_mod.autocast_dtype(cpu, True, cpu_bf16=False) is None
    monkeypatch.setattr("bertflow.bert_core.cpu_bf16.cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="finetune.cpu_bf16.*no native bf16"):
        model_mod.autocast_dtype(cpu, True, cpu_bf16=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert model_mod.autocast_dtype(torch.device("cuda"), True, cpu_bf16=True) is None  # a CPU-only setting


def test_single_label_training_data_is_refused(tiny_bert, tmp_path):
    train_csv = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "x"), ("b", "x"), ("c", "x")])
    with pytest.raises(InputError, match="single label"):
        run(FinetuneConfig(train_path=str(train_csv), **FAST), tiny_bert, tmp_path / "out")
