"""Registered models travel: they load, predict and serve where bertflow is not installed.

Two tiny classifiers (a keyword sentiment model and a person/place tagger) and a tiny SQuAD 2.0
question-answering model are fine-tuned and registered by the real finetune stage (Prefect flow,
MLflow on SQLite in a temp dir), so they are logged by the pipeline's own code. Then: the logged
model is code plus a Hugging Face directory (no pickle, no CloudPickle warning), it loads and
predicts in a Python that cannot import bertflow, token models give the spans transformers'
pipeline gives, ``bertflow score`` agrees with the pyfunc (labels, answers) and records the
registry version, and ``mlflow models serve`` answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from bertflow import __version__
from bertflow.bert_core.finetune.predict import Predictor
from bertflow.bert_core.stageio import file_digest, model_dir_digest
from bertflow.tasks import registry, tracking
from tests.helpers import (build_tiny_bert, build_tiny_head, free_port, ner_rows, read_scored, running,
                           run_without_bertflow, sentiment_rows, squad_articles, venv_bin_dirs, write_conll, write_csv,
                           write_parquet, write_squad)

SEQ, NER, QA = "tiny-sentiment", "tiny-ner", "tiny-qa"
TRAIN = {"epochs": 12, "batch_size": 16, "lr": 0.002, "valid_fraction": 0.2, "early_stopping_patience": 4,
         "num_threads": 1, "device": "cpu"}
SEQ_TEXTS = ["the cat sat on the mat great", "awful river under bright light", "a dog walked okay"]
NER_TEXTS = ["alice walked to paris", "bob marley sat with zanderbrook in new york.",
             "the  cat,  quixotlan  and   alice", "", "nothing here"]
# 32-token windows 8 apart: the model's own max_length and doc_stride, which bertflow score is given too
QA_TRAIN = {"task": "qa", "max_length": 32, "doc_stride": 8, "epochs": 14, "batch_size": 32, "lr": 0.005,
            "valid_fraction": 0.2, "early_stopping_patience": 5, "num_threads": 1, "device": "cpu"}
QA_SCORE = {"max_length": 32, "stride": 8}


def qa_rows() -> tuple[list, list, list]:
    """Questions, contexts and gold answers (None: unanswerable) like the training data's, then bad rows:
    a question long enough to be cut, a null question, a blank and a null context."""
    questions, contexts, golds = [], [], []
    for article in squad_articles(4, seed=9, unanswerable=0.3, words=(3, 16)):
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                questions.append(qa["question"])
                contexts.append(p["context"])
                golds.append(qa["answers"][0]["text"] if qa["answers"] else None)
    long_question = "where did alice live " + "and then " * 12 + "?"
    questions += [long_question, None, "where did bob live?", "who lived in rome?"]
    contexts += ["bob lived in oslo and alice lived in rome.", "alice lived in paris.", "   ", None]
    return questions, contexts, golds + [None] * 4


@contextlib.contextmanager
def captured(into: list[str]):
    """Every Python warning and every MLflow or root log record emitted in the block, as text."""

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger("mlflow"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        into.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture(scope="module")
def champions(prefect_harness, tmp_path_factory):
    """The two models, fine-tuned and registered by the finetune stage; each is its name's champion."""
    from bertflow.api import run_pipeline

    root = tmp_path_factory.mktemp("champion")
    base = build_tiny_bert(root / "bert")
    sentiment = write_csv(root / "sentiment.csv", ["text", "label"], sentiment_rows(300, seed=0))
    ner = write_conll(root / "ner.conll", ner_rows(300, seed=1))
    ws = root / "ws"
    common = [f"finetune.base_model={base}", *(f"finetune.{k}={v}" for k, v in TRAIN.items())]
    messages: list[str] = []
    with captured(messages):
        seq = run_pipeline("tiny", stages=["finetune"], workspace=ws, overrides=[
            *common, f"finetune.train_path={sentiment}", f"finetune.registered_model_name={SEQ}"])
        tok = run_pipeline("tiny", stages=["finetune"], workspace=ws, overrides=[
            *common, "finetune.task=token", f"finetune.train_path={ner}", f"finetune.registered_model_name={NER}"])
        squad = write_squad(root / "squad.json", squad_articles(40, seed=2, unanswerable=0.3, words=(3, 16)), "2.0")
        qa = run_pipeline("tiny", stages=["finetune"], workspace=ws, overrides=[
            f"finetune.base_model={base}", *(f"finetune.{k}={v}" for k, v in QA_TRAIN.items()),
            f"finetune.train_path={squad}", f"finetune.registered_model_name={QA}"])
    uri = seq.tracking_uri
    tracking.use_store(uri)  # mlflow.pyfunc.load_model("models:/...") reads the process-wide registry URI
    client = tracking.client(uri)
    hf = {name: registry.resolve_model_dir(f"models:/{name}@champion", root / "cache", tracking_uri=uri)
          for name in (SEQ, NER, QA)}
    return {"root": root, "ws": ws, "uri": uri, "client": client, "base": base,
            "train": {SEQ: sentiment, NER: ner, QA: squad},
            "runs": {SEQ: seq.stages["finetune"], NER: tok.stages["finetune"], QA: qa.stages["finetune"]}, "hf": hf,
            "messages": messages}


def _imports(path: Path) -> set[str]:
    """The top-level packages a Python file imports."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    return found


def _version(champions, name: str) -> str:
    return champions["runs"][name].registry.version


def test_logging_uses_models_from_code_and_warns_of_no_cloudpickle(champions, tmp_path):
    for name in (SEQ, NER, QA):
        assert champions["runs"][name].registry.promoted  # the first version of each name is its champion
    assert not [m for m in champions["messages"] if "cloudpickle" in m.lower()]

    # control: the capture does see MLflow's warning when a Python object is pickled
    seen: list[str] = []
    with captured(seen):
        mlflow.pyfunc.save_model(str(tmp_path / "pickled"), python_model=lambda df: df,
                                 pip_requirements=["pandas"])
    assert any("CloudPickle" in m for m in seen)


@pytest.mark.parametrize("name", [SEQ, NER, QA])
def test_model_holds_code_weights_signature_and_pinned_requirements(champions, name):
    client = champions["client"]
    mv = client.get_model_version(name, _version(champions, name))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}",
                                                     dst_path=str(champions["root"] / f"dl-{name}")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "hf_pyfunc.py" in files and "artifacts/hf_model/model.safetensors" in files
    assert not [f for f in files if f.endswith((".pkl", ".bin", ".pt"))]  # nothing is unpickled at load
    spec = mlflow.models.Model.load(str(local))
    assert spec.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert _imports(local / "hf_pyfunc.py") <= {"__future__", "json", "pathlib", "mlflow", "numpy", "pandas",
                                                 "torch", "transformers"}  # no bertflow
    wanted = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy")
    requirements = (local / "requirements.txt").read_text(encoding="utf-8").split()
    assert sorted(requirements) == sorted(f"{p}=={installed_version(p).split('+')[0]}" for p in wanted)
    task = {SEQ: "sequence", NER: "token", QA: "qa"}[name]
    inputs = ["question", "context"] if name == QA else ["text"]
    assert spec.signature.inputs.input_names() == inputs
    outputs = {SEQ: ["label", "score", "probabilities", "error"], NER: ["entities", "error"],
               QA: ["answer", "answer_start", "answer_end", "score", "error"]}[name]
    assert spec.signature.outputs.input_names() == outputs
    example = spec.load_input_example(str(local))
    assert example[inputs].to_dict("records") == registry.input_example(task=task).to_dict("records")

    tags, run = mv.tags, champions["runs"][name]
    assert tags["bertflow.version"] == __version__
    assert tags["bertflow.task"] == task
    assert tags["bertflow.base_model"] == str(champions["base"])
    assert tags["bertflow.base_model_digest"] == model_dir_digest(champions["base"])
    assert tags["bertflow.train_digest"] == file_digest(champions["train"][name])
    assert tags["bertflow.eval_set_digest"] == run.details["eval_set_digest"] == tags["eval_digest"]
    assert tags["bertflow.eval_metric"] == {SEQ: "accuracy", NER: "entity_f1", QA: "f1"}[name]
    assert float(tags["bertflow.eval_metric_value"]) == run.metrics["eval_metric"] == float(tags["eval_metric"])


LOAD_WITHOUT_BERTFLOW = """
import json, time
try:
    import bertflow
    missing = None
except ImportError as exc:
    missing = str(exc)
t0 = time.perf_counter()
import mlflow, pandas as pd
seq_texts, ner_texts, qa_rows = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
seq = mlflow.pyfunc.load_model(sys.argv[4]).predict(pd.DataFrame({"text": seq_texts}))
t1 = time.perf_counter()
ner = mlflow.pyfunc.load_model(sys.argv[5]).predict(pd.DataFrame({"text": ner_texts}))
t2 = time.perf_counter()
qa = mlflow.pyfunc.load_model(sys.argv[6]).predict(pd.DataFrame(qa_rows))
print(json.dumps({"missing": missing, "seq": seq.to_dict("records"), "ner": ner["entities"].tolist(),
                  "qa": qa.to_dict("records"), "seconds": [t1 - t0, t2 - t1, time.perf_counter() - t2]}))
"""


def test_champions_load_and_predict_where_bertflow_cannot_be_imported(champions, tmp_path):
    questions, contexts, golds = qa_rows()
    proc = run_without_bertflow(
        LOAD_WITHOUT_BERTFLOW,
        [json.dumps(SEQ_TEXTS + [None, ""]), json.dumps(NER_TEXTS), json.dumps({"question": questions, "context": contexts}),
         f"models:/{SEQ}@champion", f"models:/{NER}@champion", f"models:/{QA}@champion"],
        cwd=tmp_path, env={"MLFLOW_TRACKING_URI": champions["uri"], "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["missing"] and "bertflow" in got["missing"]  # the same process could not import bertflow
    print(f"load + predict without bertflow: sequence {got['seconds'][0]:.1f} s (imports included), "
          f"token {got['seconds'][1]:.1f} s, qa {got['seconds'][2]:.1f} s")

    expected = Predictor(champions["hf"][SEQ], device="cpu").predict(SEQ_TEXTS)  # bertflow's own predictor
    null, blank = got["seq"][-2:]  # no prediction for a null or blank text (not the text "nan"), and why
    assert null == {"label": None, "score": None, "probabilities": None, "error": "null_text"}
    assert blank == {"label": None, "score": None, "probabilities": None, "error": "empty_text"}
    got["seq"] = got["seq"][:-2]
    assert all(r["error"] is None for r in got["seq"])
    assert [r["label"] for r in got["seq"]] == [p.label for p in expected]
    assert [r["score"] for r in got["seq"]] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert all(len(r["probabilities"]) == 3 and sum(r["probabilities"]) == pytest.approx(1, abs=1e-5)
               for r in got["seq"])
    assert got["seq"][0]["label"] == "pos" and got["seq"][1]["label"] == "neg"  # it learned the keywords

    assert got["ner"] == _spans_in_process(champions, NER_TEXTS)
    first = {(e["text"], e["label"]) for e in got["ner"][0]}
    assert {("alice", "PER"), ("paris", "LOC")} <= first  # the tagger learned its names (a tiny model may add one)
    for text, spans in zip(NER_TEXTS, got["ner"]):
        assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in spans or [])
    assert got["ner"][3] is None  # an empty text: no prediction (its error says empty_text)

    in_process = mlflow.pyfunc.load_model(f"models:/{QA}@champion").predict(
        pd.DataFrame({"question": questions, "context": contexts}))
    assert got["qa"] == in_process.to_dict("records")
    answered = [(r["answer"] or "", g) for r, g in zip(got["qa"][:-4], golds) if g is not None]
    assert sum(a == g for a, g in answered) >= 0.4 * len(answered)  # it learned who lived where (chance: ~0.05)
    assert sum(g in a or (a and a in g) for a, g in answered) >= 0.75 * len(answered)  # or a piece more or less
    # SQuAD 2.0: a scored row without an answer (error "truncated" marks the many questions cut at 14 tokens:
    # half a 32-token window; the tiny vocabulary spells most words letter by letter)
    assert any(r["answer"] is None and r["score"] is not None for r in got["qa"][:-4])
    for context, r in zip(contexts, got["qa"]):
        if r["answer"] is not None:
            assert context[r["answer_start"]:r["answer_end"]] == r["answer"] and 0 < r["score"] <= 1
        elif r["error"] in (None, "truncated"):
            assert r["answer_start"] is None and 0 < r["score"] <= 1  # no answer: the no-answer probability
    assert [r["error"] for r in got["qa"][-4:]] == ["truncated", "null_question", "empty_context", "null_context"]
    assert all(r["answer"] is None and r["score"] is None for r in got["qa"][-3:])


def _spans_in_process(champions, texts: list[str]) -> list[list[dict]]:
    model = mlflow.pyfunc.load_model(f"models:/{NER}@champion")
    return model.predict(pd.DataFrame({"text": texts}))["entities"].tolist()


def _pipeline_spans(hf_dir: Path, texts: list[str]) -> list[list[dict]]:
    """transformers' own token-classification pipeline, words tagged at their first piece."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    tagger = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(
        str(hf_dir), trust_remote_code=False), tokenizer=AutoTokenizer.from_pretrained(str(hf_dir)),
        aggregation_strategy="first", device="cpu")
    return [[{"label": e["entity_group"], "start": e["start"], "end": e["end"], "score": float(e["score"])}
             for e in tagger(t)] for t in texts]


def _comparable(spans: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["label"], e["start"], e["end"], round(e["score"], 4)) for e in row] for row in spans]


def test_token_spans_are_the_spans_of_transformers_pipeline(champions, tmp_path):
    from mlflow.pyfunc import PythonModelContext
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from bertflow.bert_core.finetune.export import export_model
    from bertflow.tasks.hf_pyfunc import FineTunedModel

    texts = [t for t in NER_TEXTS if t]
    ours = _spans_in_process(champions, texts)
    assert _comparable(ours) == _comparable(_pipeline_spans(champions["hf"][NER], texts))

    # A random head tags at random: I- after O, B- inside a span, type changes: the grouping rules all apply.
    import torch

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    torch.manual_seed(3)
    model = AutoModelForTokenClassification.from_pretrained(
        str(champions["base"]), num_labels=5, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, initializer_range=2.0)
    random_dir = export_model(model, AutoTokenizer.from_pretrained(str(champions["base"])), tmp_path / "random",
                              {"task": "token", "max_length": 64, "label_names": names, "text_pair": False})
    loaded = FineTunedModel()
    loaded.load_context(PythonModelContext(artifacts={"hf_model": str(random_dir)}, model_config=None))
    many = [" ".join(w) for w, _ in ner_rows(40, seed=7)] + texts
    random_spans = loaded.predict(None, pd.DataFrame({"text": many}))["entities"].tolist()
    assert sum(len(row) for row in random_spans) > 40 and any(e["end"] - e["start"] > 12
                                                              for row in random_spans for e in row)
    assert _comparable(random_spans) == _comparable(_pipeline_spans(random_dir, many))


def test_score_stage_and_pyfunc_agree_and_the_lake_names_the_version(champions):
    from bertflow.api import score
    from bertflow.bert_core.score.commit import read_commit
    from bertflow.bert_core.stageio import read_manifest

    root = champions["root"]
    texts = [t for t, _ in sentiment_rows(500, seed=11)]
    lake = root / "lake"
    for f in range(2):
        write_parquet(lake / f"part-{f}.parquet", {"id": list(range(f * 250, (f + 1) * 250)),
                                                   "text": texts[f * 250:(f + 1) * 250]})
    alias = f"models:/{SEQ}@champion"
    run = score(lake, alias, output=root / "scored", workspace=champions["ws"], device="cpu")
    table = read_scored(root / "scored").sort_by("id").to_pydict()
    assert table["id"] == list(range(500))

    expected = mlflow.pyfunc.load_model(alias).predict(pd.DataFrame({"text": texts}))
    assert table["label"] == expected["label"].tolist()
    assert table["score"] == pytest.approx(expected["score"].tolist(), abs=1e-4)

    pinned = f"{SEQ}/{_version(champions, SEQ)}"
    assert set(table["model_version"]) == {pinned} and set(table["model_uri"]) == {alias}
    assert read_manifest(root / "scored", "score")["model_version"] == pinned
    assert {read_commit(p)["model_version"] for p in (root / "scored").glob("*.parquet")} == {pinned}
    tags = champions["client"].get_run(run.run_id).data.tags
    assert tags["bertflow.input.model"] == f"models:/{pinned}"  # the alias was resolved once, for the run

    # a local directory is named by its weights' fingerprint
    local = score(lake, champions["hf"][SEQ], output=root / "scored-local", workspace=champions["ws"], device="cpu")
    assert local.metrics["rows_scored"] == 500
    versions = set(read_scored(root / "scored-local").column("model_version").to_pylist())
    assert versions == {model_dir_digest(champions["hf"][SEQ])[:19]}


def test_score_stage_answers_as_the_qa_pyfunc_does(champions):
    """``bertflow score`` given the model's own windows (max_length, doc_stride) gives the pyfunc's answers."""
    from bertflow.api import score

    root = champions["root"]
    questions, contexts, _ = qa_rows()
    write_parquet(root / "qa-lake" / "part-0.parquet", {"id": list(range(len(questions))), "question": questions,
                                                        "context": contexts})
    alias = f"models:/{QA}@champion"
    score(root / "qa-lake", alias, output=root / "qa-scored", workspace=champions["ws"], device="cpu", **QA_SCORE)
    table = read_scored(root / "qa-scored").sort_by("id").to_pylist()
    expected = mlflow.pyfunc.load_model(alias).predict(
        pd.DataFrame({"question": questions, "context": contexts})).to_dict("records")
    keys = ("answer", "answer_start", "answer_end", "error")
    assert [tuple(r[k] for k in keys) for r in table] == [tuple(e[k] for k in keys) for e in expected]
    assert [r["score"] for r in table] == [None if e["score"] is None else pytest.approx(e["score"], abs=1e-4)
                                           for e in expected]
    assert sum(r["answer"] is not None for r in table) > 10
    assert any(r["answer"] is None and r["score"] is not None for r in table)  # below the model's null threshold
    assert {r["model_version"] for r in table} == {f"{QA}/{_version(champions, QA)}"}


def test_a_qa_directory_from_elsewhere_is_detected_and_answers(tmp_path):
    """No bertflow marker: the task comes from config.json's architecture, the windows from fine-tuning's defaults."""
    from mlflow.pyfunc import PythonModelContext

    from bertflow.tasks.hf_pyfunc import FineTunedModel

    hf = build_tiny_head(tmp_path / "qa", "qa")
    assert not (hf / "bertflow_finetune.json").exists()
    model = FineTunedModel()
    model.load_context(PythonModelContext(artifacts={"hf_model": str(hf)}, model_config=None))
    assert model.task == "qa" and model.max_length == 64 and model.qa.stride < 64 and model.qa.null_threshold is None
    context = "a dog sat by the house and " * 4 + "alice lived in paris."  # ~60 pieces: two windows of 64
    got = model.predict(None, [{"question": "where did alice live?", "context": context},
                               {"question": "who?", "context": float("nan")}]).to_dict("records")
    assert got[0]["answer"] == context[got[0]["answer_start"]:got[0]["answer_end"]] and got[0]["error"] is None
    assert got[1] == {"answer": None, "answer_start": None, "answer_end": None, "score": None,
                      "error": "null_context"}
    with pytest.raises(ValueError, match="'question' and 'context' columns"):
        model.predict(None, pd.DataFrame({"text": ["where did alice live?"]}))


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(champions):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{SEQ}@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": champions["uri"],
           "PATH": os.pathsep.join([*venv_bin_dirs(), os.environ.get("PATH", "")])}  # uvicorn of the environment
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with running(cmd, f"{base}/ping", env=env, timeout=240):
        reply = httpx.post(f"{base}/invocations", json={"dataframe_records": [{"text": t} for t in SEQ_TEXTS]},
                           timeout=120)
        print(f"serve round trip (start + first answer): {time.perf_counter() - t0:.1f} s")
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        bad = httpx.post(f"{base}/invocations", json={"dataframe_records": [{"txt": "no text column"}]}, timeout=60)
    expected = mlflow.pyfunc.load_model(f"models:/{SEQ}@champion").predict(pd.DataFrame({"text": SEQ_TEXTS}))
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert [p["score"] for p in predictions] == pytest.approx(expected["score"].tolist(), abs=1e-6)
    assert bad.status_code == 400 and "text" in bad.text  # the signature is enforced
    with pytest.raises(httpx.TransportError):  # the server was stopped with the block
        httpx.get(f"{base}/ping", timeout=2)
