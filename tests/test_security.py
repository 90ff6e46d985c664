"""Security rules, one test (or a scan plus a behavioural test) per rule.

1. Model weights load from safetensors only; a pickle checkpoint needs ``<stage>.allow_pickle_weights``.
2. ``torch.load`` always runs with ``weights_only=True``; a checkpoint holding a pickled object is refused.
3. Nothing passes ``trust_remote_code=True``; a model dir's ``auto_map`` code never runs.
4. User column names, filters and paths never reach DuckDB as spliced SQL.
5. Partition values from data cannot steer output files out of the output directory.
6. Every server we start or document binds to 127.0.0.1.
7. The README says how to share the MLflow UI safely.

Payloads write a marker file when they run; every test asserts the marker is absent.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertflow.bert_core.configtools import evolve
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.safeload import hf_model_kwargs
from tests.helpers import REPO, free_port, running

SOURCE_DIRS = ("bert_core", "tasks", "flows", "deployments")
VOCAB, HIDDEN = 300, 32
LABELS = {0: "neg", 1: "pos"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def source_trees() -> list[tuple[Path, ast.Module]]:
    files = sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))
    assert files, "no source files found to scan"
    return [(p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p))) for p in files]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:120]}"


# ---------------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny BERTs (2 layers x 32 hidden, 300-word vocab) twice: safetensors, and the same weights as a pickle only."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    from bertflow.bert_core.pretrain.synthetic import write_tokenizer

    root = tmp_path_factory.mktemp("models")
    config = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=2 * HIDDEN, max_position_embeddings=64)
    out = {}
    for kind, build in (("clf", lambda: BertForSequenceClassification(
            BertConfig(**config, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}))),
            ("mlm", lambda: BertForMaskedLM(BertConfig(**config)))):
        torch.manual_seed(0)
        model = build().eval()
        safe = write_tokenizer(root / f"{kind}-safe", VOCAB)
        model.save_pretrained(safe)
        AutoTokenizer.from_pretrained(str(safe)).save_pretrained(str(safe))  # adds tokenizer.json (fast)
        pickled = root / f"{kind}-pickle"
        shutil.copytree(safe, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
        torch.save(model.state_dict(), pickled / "pytorch_model.bin")
        out[kind] = (safe, pickled)
    return out


def tiny_ids() -> torch.Tensor:
    return torch.tensor([[2, 10, 11, 12, 13, 3], [2, 40, 50, 3, 0, 0]])


# ---------------------------------------------------------------------------------------------- rule 1


def _finetune_loads(safe: Path, pickled: Path, tmp_path: Path) -> None:
    from bertflow.bert_core.finetune.config import FinetuneConfig
    from bertflow.bert_core.finetune.model import build_model
    from bertflow.bert_core.finetune.predict import Predictor
    from bertflow.bert_core.finetune.stage import run

    with pytest.raises(InputError, match=r"pytorch_model\.bin.*finetune\.allow_pickle_weights"):
        run(FinetuneConfig(base_model=str(pickled), device="cpu"), pickled, tmp_path / "out")
    with pytest.raises(InputError, match=r"pytorch_model\.bin"):
        build_model(pickled, "sequence", list(LABELS.values()))
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*allow_pickle_weights"):
        Predictor(pickled, device="cpu")
    ours = build_model(pickled, "sequence", list(LABELS.values()), allow_pickle_weights=True).eval()
    ref = build_model(safe, "sequence", list(LABELS.values())).eval()
    with torch.inference_mode():
        assert torch.equal(ours(tiny_ids()).logits, ref(tiny_ids()).logits)
    texts = ["w1 w2 w3", "w40 w7"]
    got = Predictor(pickled, device="cpu", allow_pickle_weights=True).predict(texts)
    assert got == Predictor(safe, device="cpu").predict(texts)


def _score_loads(safe: Path, pickled: Path, tmp_path: Path) -> None:
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.model import load_classifier

    with pytest.raises(InputError, match=r"pytorch_model\.bin.*score\.allow_pickle_weights"):
        load_classifier(pickled, ScoreConfig(device="cpu"))
    ours = load_classifier(pickled, ScoreConfig(device="cpu", allow_pickle_weights=True)).model
    with torch.inference_mode():
        got = ours(tiny_ids()).logits.clone()
        ref = load_classifier(safe, ScoreConfig(device="cpu")).model(tiny_ids()).logits
    assert torch.equal(got, ref)
    with pytest.raises(InputError, match=r"pytorch_model\.bin"):  # a model loaded once with the opt-in is not reused
        load_classifier(pickled, ScoreConfig(device="cpu"))


def _pretrain_loads(safe: Path, pickled: Path, tmp_path: Path) -> None:
    from bertflow.bert_core.pretrain.config import PretrainConfig
    from bertflow.bert_core.pretrain.hf_compat import read_hf_dir
    from bertflow.bert_core.pretrain.stage import run
    from bertflow.bert_core.pretrain.synthetic import write_masked_data

    data = write_masked_data(tmp_path / "data", 16, 16, VOCAB)
    tiny = dict(batch_size=4, max_steps=1, warmup_steps=0, device="cpu", num_workers=0, checkpoint_every=1,
                init_from=str(pickled))
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*pretrain\.allow_pickle_weights"):
        run(PretrainConfig(**tiny), data, safe, tmp_path / "refused")
    with pytest.raises(InputError, match=r"pytorch_model\.bin"):
        read_hf_dir(pickled)
    shape, state = read_hf_dir(pickled, allow_pickle_weights=True)
    ref_shape, ref_state = read_hf_dir(safe)
    assert shape == ref_shape and state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    result = run(PretrainConfig(**tiny, allow_pickle_weights=True), data, safe, tmp_path / "run")
    assert result.metrics["steps"] == 1


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "score"])
def test_rule1_pickle_weights_are_refused_unless_opted_in(stage, models, tmp_path):
    """Default: an InputError naming pytorch_model.bin and the opt-in key. Opted in: the same outputs."""
    loads = {"pretrain": _pretrain_loads, "finetune": _finetune_loads, "score": _score_loads}[stage]
    safe, pickled = models["mlm" if stage == "pretrain" else "clf"]
    assert not list(pickled.glob("*.safetensors"))
    loads(safe, pickled, tmp_path)
    assert hf_model_kwargs(False)["use_safetensors"] is True
    from bertflow.bert_core.config import load_config

    assert getattr(load_config(None, []), stage).allow_pickle_weights is False
    assert getattr(load_config(None, [f"{stage}.allow_pickle_weights=true"]), stage).allow_pickle_weights is True


# ---------------------------------------------------------------------------------------------- rule 2

_PICKLE_LOADERS = {"pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads",
                   "joblib.load", "torch.load", "torch.serialization.load"}


def test_rule2_every_torch_load_passes_weights_only_true():
    offenders, torch_loads = [], 0
    for path, tree in source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "torch.serialization") \
                    and any(a.name in ("load", "loads") for a in node.names):
                offenders.append(where(path, node))  # a bare load() would escape the checks below
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            for kw in node.keywords:
                if kw.arg == "weights_only" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    offenders.append(where(path, node))
            if name not in _PICKLE_LOADERS:
                continue
            if name.startswith("torch."):
                torch_loads += 1
                if any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                       for kw in node.keywords):
                    continue
            offenders.append(where(path, node))
    assert not offenders, "unsafe unpickling:\n" + "\n".join(offenders)
    assert torch_loads >= 1  # the scan saw the checkpoint loader


class _Payload:
    """Unpickling this writes a marker file: what a hostile checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng.pt"])
def test_rule2_a_checkpoint_holding_a_pickled_object_is_refused_unrun(victim, tmp_path):
    from bertflow.bert_core.pretrain import checkpoint as ckpt

    marker = tmp_path / "marker"
    step = ckpt.save_checkpoint(tmp_path / "run", 5, {"w": torch.ones(2)}, {"state": {}, "param_groups": []},
                                [ckpt.capture_rng()], {"step": 5}, keep=1)
    assert ckpt.load_checkpoint(step).state == {"step": 5}  # the genuine checkpoint loads
    torch.save({"state": {}, "param_groups": [], "extra": _Payload(marker)}, step / victim)
    with pytest.raises(InputError, match=rf"{victim}.*pickled Python objects.*refused"):
        ckpt.load_checkpoint(step)
    assert not marker.exists()
    torch.load(step / victim, weights_only=False)  # the payload is live: an unsafe loader would have run it
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------- rule 3


def test_rule3_no_call_trusts_remote_code():
    offenders, loads = [], 0
    for path, tree in source_trees():
        helper_names = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                        and ast.unparse(n.value.func).endswith("hf_model_kwargs")
                        for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                is_false = isinstance(kw.value, ast.Constant) and kw.value.value is False
                if kw.arg == "trust_remote_code" and not is_false:
                    offenders.append(where(path, node))
            if isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                loads += 1
                explicit = any(kw.arg == "trust_remote_code" for kw in node.keywords)
                via_helper = any(kw.arg is None and isinstance(kw.value, ast.Call)
                                 and ast.unparse(kw.value.func).endswith("hf_model_kwargs") for kw in node.keywords)
                via_name = any(kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id in helper_names
                               for kw in node.keywords)
                if not (explicit or via_helper or via_name):  # transformers' default (None) asks on stdin
                    offenders.append(where(path, node))
    assert not offenders, "from_pretrained without trust_remote_code=False:\n" + "\n".join(offenders)
    assert loads >= 4
    assert hf_model_kwargs(True)["trust_remote_code"] is False and hf_model_kwargs(False)["trust_remote_code"] is False


def _with_custom_code(src: Path, dst: Path, model_type: str, marker: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
        "from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast\n"
        f"class EvilConfig(BertConfig):\n    model_type = {model_type!r}\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n", encoding="utf-8")
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel",
                          "AutoModelForTokenClassification": "evil.EvilModel"}
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (dst / "tokenizer_config.json").write_text(json.dumps(tok), encoding="utf-8")
    return dst


@pytest.mark.parametrize("model_type", ["bert", "evilbert"])
def test_rule3_auto_map_code_in_a_model_dir_never_runs(model_type, models, tmp_path, monkeypatch):
    """A known model_type loads the plain BERT class; an unknown one is a clear error. The code never runs.

    For an unknown model_type, transformers asks on stdin before running a model dir's code unless
    told ``trust_remote_code``; here every such question is answered "y", so a loader that leaves it
    unset runs the payload (the control test below shows the payload does run when trusted).
    """
    from bertflow.bert_core.finetune.model import build_model, load_finetuned, load_tokenizer
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.model import load_classifier

    monkeypatch.setattr("builtins.input", lambda *a, **k: "y")
    marker = tmp_path / "marker"
    model_dir = _with_custom_code(models["clf"][0], tmp_path / "model", model_type, marker)
    loaders = {
        "finetune.build_model": lambda: build_model(model_dir, "sequence", list(LABELS.values())),
        "finetune.load_finetuned": lambda: load_finetuned(model_dir, "sequence"),
        "score.load_classifier": lambda: load_classifier(model_dir, ScoreConfig(device="cpu")).model,
    }
    for name, load in loaders.items():
        if model_type == "bert":
            assert type(load()).__name__ == "BertForSequenceClassification", name
        else:
            with pytest.raises(InputError, match="custom code"):
                load()
        assert not marker.exists(), f"{name} ran the model directory's code"
    assert type(load_tokenizer(model_dir)).__name__ != "EvilTokenizer"
    assert not marker.exists()


def test_rule3_control_the_payload_runs_when_the_code_is_trusted(models, tmp_path):
    """The control for the test above: the planted code is live, so its marker's absence there means something."""
    from transformers import AutoModelForSequenceClassification

    marker = tmp_path / "marker"
    model_dir = _with_custom_code(models["clf"][0], tmp_path / "model", "evilbert", marker)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=True)
    assert type(model).__name__ == "EvilModel" and marker.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------- rule 4

HOSTILE_NAMES = ['text"; DROP TABLE x; --', "it's", 'a"b', "back`tick", "new\nline", "sp ace,comma", "ümlaut"]
_SQL_METHODS = {"sql", "execute", "executemany", "query", "from_query"}


def _injection(marker: Path) -> str:
    return f"x') TO '{marker}' (FORMAT csv); COPY (SELECT 1) TO '{marker}'; --"


def _write_input(path: Path, fmt: str, column: str, rows: list[str]) -> None:
    records = [{column: r, "other": "zzz"} for r in rows]
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[column, "other"], delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)


def test_rule4_hostile_column_names_and_paths_are_data_not_sql(tmp_path):
    from bertflow.bert_core.ingest.config import IngestConfig
    from bertflow.bert_core.ingest.discover import InputFile, classify
    from bertflow.bert_core.ingest.readers import FileRejected, ReadStats, iter_raw_documents

    marker = tmp_path / "pwned"
    read = rejected = 0
    for i, column in enumerate([*HOSTILE_NAMES, _injection(marker)]):
        for fmt in ("csv", "tsv", "jsonl", "json", "parquet"):
            path = tmp_path / f"we'ird \"{i}\" `$(touch {marker.name})`; --.{fmt}"
            docs = [f"doc {i} one", f"doc {i} two; DROP TABLE t; --"]
            _write_input(path, fmt, column, docs)
            f = InputFile(str(path), *classify(path), path.stat().st_size)
            try:
                batches = iter_raw_documents(f, IngestConfig(text_field=column), ReadStats())
                got = [d for batch in batches for d in batch]
            except FileRejected as exc:  # a clear per-file reason (DuckDB cannot sniff a CSV header with a newline)
                assert "\n" in column and fmt in ("csv", "tsv"), f"{fmt} {column!r}: {exc}"
                rejected += 1
            else:
                assert got == docs, (fmt, column)
                read += 1
    assert not marker.exists()
    assert read >= 35 and rejected <= 2


def _sql_text_ok(node: ast.AST, assigned: dict[str, list[ast.AST]], seen: set[str]) -> bool:
    """SQL text built only from constants, ``quote_ident(...)`` and names bound to such text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return all(_sql_text_ok(v, assigned, seen) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        value = node.value
        if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] == "quote_ident":
            return True
        return _sql_text_ok(value, assigned, seen)
    if isinstance(node, ast.Name) and node.id not in seen and node.id in assigned:
        return all(_sql_text_ok(v, assigned, seen | {node.id}) for v in assigned[node.id])
    return False  # an f-string of user data, +, %, .format(...), a parameter...


def test_rule4_sql_text_interpolates_only_quoted_identifiers_and_constants():
    offenders, checked = [], 0
    for path, tree in source_trees():
        for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
            assigned: dict[str, list[ast.AST]] = {}
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            assigned.setdefault(target.id, []).append(node.value)
            for node in ast.walk(scope):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _SQL_METHODS and node.args):
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and not isinstance(first.value, str):
                        continue
                    checked += 1
                    if not _sql_text_ok(first, assigned, set()):
                        offenders.append(where(path, node))
    assert not offenders, "SQL built from non-constant text:\n" + "\n".join(offenders)
    assert checked >= 3  # the ingest readers' queries were seen


def test_rule4_score_filters_and_columns_with_hostile_text_stay_literal(models, tmp_path):
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import output_dataset, run

    marker = tmp_path / "pwned"
    hostile_value = f"'; COPY (SELECT 1) TO '{marker}'; --"
    text_col, key_col = 'te"xt; DROP TABLE x; --', "it's `key`\n"
    table = pa.table({text_col: ["w1 w2", "w3", "w4 w5 w6", "w7"], key_col: ["a", "b", "c", "d"],
                      "lang": ["en", hostile_value, "en", "fr"]})
    pq.write_table(table, tmp_path / "in.parquet")
    quoted = hostile_value.replace("'", "''")
    cfg = ScoreConfig(input=str(tmp_path / "in.parquet"), text_column=text_col, key_columns=(key_col, "lang"),
                      where=f"lang IN ('en', '{quoted}') AND \"{key_col}\" != 'c'", device="cpu", max_length=16)
    run(cfg, models["clf"][0], tmp_path / "out")
    out = output_dataset(tmp_path / "out").to_table()
    assert out.column_names[:2] == [key_col, "lang"] and out[key_col].to_pylist() == ["a", "b"]
    assert out["lang"].to_pylist()[1] == hostile_value
    for bad in (f"lang = 'en'; COPY (SELECT 1) TO '{marker}'", f"\"{key_col}\" = 'a' OR 1=1",
                f"lang IN (SELECT 1 FROM read_text('{marker}'))", "lang = 'en' -- OR 1=1"):
        with pytest.raises(ConfigError, match="score.where"):  # refused when the config is made, before any run
            run(evolve(cfg, where=bad), models["clf"][0], tmp_path / "out2")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- rule 5


def test_rule5_partition_values_and_symlinks_cannot_write_outside_the_output(models, tmp_path):
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import output_dataset, run

    world = tmp_path / "world"
    lake, outside, elsewhere = world / "lake", world / "outside", world / "elsewhere"
    rows = {"text": ["w1 w2", "w3"]}
    hostile = {"dt=..": "..", "dt=%2E%2E%2F%2E%2E%2Fescape": "../../escape", "dt=%2Fetc%2Fcron.d": "/etc/cron.d",
               "dt=a%5Cb": "a\\b", "dt=x%00y": "x\x00y"}
    for directory in hostile:
        (lake / directory).mkdir(parents=True)
        pq.write_table(pa.table(rows), lake / directory / "part-0.parquet")
    for d in (outside, elsewhere):
        d.mkdir()
        pq.write_table(pa.table(rows), d / f"{d.name}.parquet")
    (lake / "link.parquet").symlink_to(outside / "outside.parquet")  # a file link leaving the lake
    (lake / "dt=linked").symlink_to(elsewhere, target_is_directory=True)  # a directory link (globs follow it)
    before = {p for p in world.rglob("*")}
    for spec, out in ((str(lake), world / "out"), (str(lake / "**" / "*.parquet"), world / "out-glob")):
        result = run(ScoreConfig(input=spec, device="cpu", max_length=16), models["clf"][0], out)
        written = {p for p in world.rglob("*")} - before
        escaped = [p for p in written if p != out and out not in p.parents]
        assert not escaped, f"written outside {out}: {escaped}"
        assert result.metrics["files_scored"] >= len(hostile) + 1
        parts = set(output_dataset(out).to_table().column("dt").to_pylist())
        assert set(hostile.values()) <= parts  # the values survive, percent-encoded in the directory names
        before |= written


def test_rule5_an_mlflow_model_cannot_point_scoring_outside_its_directory(models, tmp_path):
    """``MLmodel`` arrives with a downloaded model: its ``hf_model`` path may not lead out of the download."""
    from bertflow.tasks.registry import resolve_model_dir

    shutil.copytree(models["clf"][0], tmp_path / "elsewhere")
    model = tmp_path / "model"
    model.mkdir()
    for rel in ("../elsewhere", str(tmp_path / "elsewhere")):
        spec = {"flavors": {"python_function": {"artifacts": {"hf_model": {"path": rel}}}}}
        (model / "MLmodel").write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
        with pytest.raises(InputError, match="holds no 'hf_model'"):
            resolve_model_dir(model, tmp_path / "cache")
    shutil.copytree(models["clf"][0], model / "artifacts" / "hf_model")
    assert resolve_model_dir(model, tmp_path / "cache") == model / "artifacts" / "hf_model"


# ---------------------------------------------------------------------------------------------- rule 6

_SERVER_CMD = re.compile(r"\b(mlflow\s+(server|ui|models\s+serve)|prefect\s+server\s+start)\b")
_LOOPBACK_HOST = re.compile(r"--host[ =](127\.0\.0\.1|localhost)\b")


def _shell_commands(text: str) -> list[str]:
    """Lines of shell text with backslash continuations joined."""
    return [line for line in re.sub(r"\\\n\s*", " ", text).splitlines() if line.strip()]


def _markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S))


def _python_commands(tree: ast.Module, strings: bool) -> list[tuple[ast.AST, str]]:
    """Argument lists (``["mlflow", "server", ...]``) and, with ``strings``, command strings (not docstrings)."""
    skip = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)}
    skip |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # parts of an f-string
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            code = ast.unparse(node)
            if ("mlflow" in code and ({"server", "ui", "serve"} & set(words))) or ("prefect" in code and "server" in words
                                                                         and "start" in words):
                found.append((node, " ".join(words)))
        elif strings and isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in skip:
            text = node.value if isinstance(node, ast.Constant) else ast.unparse(node)
            if isinstance(text, str) and _SERVER_CMD.search(text):
                found.append((node, text))
    return found


def test_rule6_every_server_command_binds_loopback():
    offenders, commands = [], 0
    texts = {REPO / "Makefile": (REPO / "Makefile").read_text(encoding="utf-8")}
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "deployments").glob("*.y*ml"))]
    for doc in docs:
        raw = doc.read_text(encoding="utf-8")
        texts[doc] = _markdown_code(raw) if doc.suffix == ".md" else raw
    for path, text in texts.items():
        for line in _shell_commands(text):
            if _SERVER_CMD.search(line):
                commands += 1
                if not _LOOPBACK_HOST.search(line):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    for path in sorted(p for d in (*SOURCE_DIRS, "tests") for p in (REPO / d).rglob("*.py")):
        # tests start servers from argument lists; their strings are expectations, not commands
        strings = path.parent.name != "tests"
        for node, text in _python_commands(ast.parse(path.read_text(encoding="utf-8")), strings):
            commands += 1
            if not _LOOPBACK_HOST.search(text):
                offenders.append(where(path, node))
    assert not offenders, "server commands without --host 127.0.0.1:\n" + "\n".join(offenders)
    assert commands >= 8  # Makefile ui, README (prefect, mlflow x2, models serve), the test servers, the CLI hint


_LISTENER = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Ok).serve_forever()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_rule6_the_test_server_helper_fails_a_server_listening_beyond_loopback():
    port = free_port()
    with running([sys.executable, "-c", _LISTENER, "127.0.0.1", str(port)], f"http://127.0.0.1:{port}/health",
                 timeout=20):
        pass
    port = free_port()
    with pytest.raises(AssertionError, match=rf"0\.0\.0\.0:{port}.*bind it to 127\.0\.0\.1"):
        with running([sys.executable, "-c", _LISTENER, "0.0.0.0", str(port)], f"http://127.0.0.1:{port}/health",
                     timeout=20):
            pass


# ---------------------------------------------------------------------------------------------- rule 7


def test_rule7_readme_says_how_to_share_the_mlflow_ui_safely():
    from importlib.metadata import entry_points

    import mlflow.environment_variables as env

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Sharing the MLflow UI safely\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    assert m, "README lacks the section 'Sharing the MLflow UI safely'"
    section = m.group(1)
    for needle in ("--app-name basic-auth", "--host 127.0.0.1", "update_user_password", "TLS"):
        assert needle in section, needle
    documented = set(re.findall(r"\bMLFLOW_[A-Z_]+\b", section))
    assert {"MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= documented
    unknown = [name for name in documented if not hasattr(env, name)]
    assert not unknown, f"README names MLflow settings this MLflow does not have: {unknown}"
    assert "basic-auth" in {e.name for e in entry_points(group="mlflow.app")}
