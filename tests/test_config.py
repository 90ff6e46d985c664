"""The config system: presets, overrides, paths relative to the preset, and clear errors naming the key at fault."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertflow.bert_core.config import PipelineConfig, load_config, presets_dir
from bertflow.bert_core.configtools import apply_overrides, evolve, flatten, from_dict, to_dict
from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.pretrain.config import RUNTIME_KEYS, PretrainConfig
from bertflow.bert_core.score.config import ScoreConfig


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_presets_load_by_path_and_by_name(repo_root, preset):
    cfg = load_config(repo_root / "configs" / f"{preset}.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name.startswith("bertflow")
    assert load_config(preset) == cfg


def test_presets_dir_is_the_repository_folder_in_a_checkout(repo_root):
    assert presets_dir() == repo_root / "configs"


def test_unknown_preset_name_lists_the_presets():
    with pytest.raises(ConfigError, match=r"no config file or preset named 'tinny' \(presets: .*\btiny\b"):
        load_config("tinny")


def test_tiny_preset_points_at_the_bundled_sample_from_any_directory(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny")
    assert [Path(p).is_absolute() for p in cfg.ingest.inputs] == [True]
    assert sorted(glob.glob(cfg.ingest.inputs[0])) == sorted(map(str, (repo_root / "data/books").glob("*.txt.gz")))
    assert Path(cfg.finetune.train_path) == repo_root / "data/labeled/train.csv"
    assert Path(cfg.score.input) == repo_root / "data/lake" and Path(cfg.score.input).is_dir()


def test_relative_paths_in_a_yaml_file_resolve_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        "ingest:\n  inputs: [books/*.txt, /abs/x.txt, '~/home.txt']\n"
        "finetune:\n  train_path: ../labeled/train.csv\n  base_model: s3://bucket/model\n  text_column: text\n"
        "score:\n  input: lake\n  model_uri: models:/clf@champion\n"
        "pretrain:\n  init_from: runs/export\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("presets/p.yaml", ["finetune.valid_path=valid.csv", "score.filter=lang = 'en'"])
    assert cfg.ingest.inputs == (str(folder / "books/*.txt"), "/abs/x.txt", "~/home.txt")
    assert cfg.finetune.train_path == str(tmp_path / "labeled/train.csv")  # normalised, no "presets/.."
    assert cfg.finetune.base_model == "s3://bucket/model" and cfg.score.model_uri == "models:/clf@champion"
    assert cfg.score.input == str(folder / "lake") and cfg.pretrain.init_from == str(folder / "runs/export")
    assert cfg.finetune.valid_path == "valid.csv"  # --set stays relative to the current directory
    assert cfg.score.where == "lang = 'en'"  # not a path: untouched (score.filter is where's old name)
    assert load_config(None).ingest.inputs == ("data/books/*.txt.gz",)  # defaults too
    local = load_config("presets/p.yaml", ["score.model_uri=export/model"]).score.model_uri
    assert local == "export/model"


def test_override_sets_typed_value(repo_root):
    cfg = load_config(repo_root / "configs/tiny.yaml", ["mask.masked_lm_prob=0.3", "pretrain.budget_minutes=2"])
    assert cfg.mask.masked_lm_prob == 0.3
    assert cfg.pretrain.budget_minutes == 2.0 and isinstance(cfg.pretrain.budget_minutes, float)
    assert cfg.pretrain.hidden_size == 64  # untouched preset value


def test_override_list_null_string_and_number():
    cfg = load_config(None, ["ingest.inputs=[a.txt, b/*.jsonl]", "finetune.valid_path=null", "name=2026"])
    assert cfg.ingest.inputs == ("a.txt", "b/*.jsonl")
    assert cfg.finetune.valid_path is None
    assert cfg.name == "2026"  # numbers are accepted where a string is expected
    one = load_config(None, ["ingest.inputs=a.txt", "score.key_columns=id"])
    assert one.ingest.inputs == ("a.txt",) and one.score.key_columns == ("id",)  # a string is a one-element list
    assert hash(one) == hash(load_config(None, ["ingest.inputs=[a.txt]", "score.key_columns=[id]"]))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("mask.nope=1", "unknown config key 'mask.nope' (known keys here: compression, dupe_factor"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("mask.masked_lm_prob=high", "mask.masked_lm_prob: expected a number, got 'high'"),
        ("mask.masked_lm_prob=1.5", "mask.masked_lm_prob: must be < 1 (got 1.5)"),
        ("vocab.max_docs=0", "vocab.max_docs: must be >= 1 (got 0)"),
        ("mask.recipe=electra", "mask.recipe: 'electra' is not one of 'full', 'nsp'"),
        ("pretrain.num_layers=two", "pretrain.num_layers: expected an integer, got 'two'"),
        ("pretrain.compile=maybe", "pretrain.compile: expected true or false, got 'maybe'"),
        ("pretrain.hidden_size=100", "pretrain.num_heads: must divide pretrain.hidden_size"),
        ("mask=3", "mask: expected a section (mapping), got 3"),
        ("ingest.encoding=klingon", "ingest.encoding: unknown encoding 'klingon'"),
        ("ingest.inputs=[]", "ingest.inputs: needs at least 1 item (got 0)"),
        ("score.device=tpu", "score.device: 'tpu' must be auto, cpu, mps, cuda or cuda:N"),
        ("score.key_columns=[id, id]", "score.key_columns: lists a column twice"),
        ("finetune.text_column=label", "finetune.label_column: must differ from finetune.text_column"),
        ("mask", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_every_bad_value_is_named_on_one_line():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["mask.masked_lm_prob=2", "pretrain.lr=0"])
    assert str(exc.value) == "mask.masked_lm_prob: must be < 1 (got 2); pretrain.lr: must be > 0 (got 0)"
    with pytest.raises(ConfigError, match="mask.dupe_factor: > 1 needs mask.masking=static"):
        load_config(None, ["mask.masking=dynamic", "mask.dupe_factor=2"])
    assert load_config(None, ["mask.masking=dynamic"]).mask.dupe_factor == 1


def test_direct_construction_and_evolve_raise_config_error():
    with pytest.raises(ConfigError, match=r"^ingest.inputs: needs at least 1 item \(got 0\)$"):
        IngestConfig(inputs=())
    with pytest.raises(ConfigError, match=r"^mask.masked_lm_prob: must be < 1 \(got 2\)$"):
        MaskConfig(masked_lm_prob=2)
    with pytest.raises(ConfigError, match="unknown config key 'score.nope'"):
        ScoreConfig(nope=1)
    cfg = PretrainConfig(init_from=Path("runs") / "export")  # a Path is taken as its string
    assert cfg.init_from == str(Path("runs") / "export")
    assert evolve(cfg, lr=1e-3).lr == 1e-3 and cfg.lr == 1e-4
    with pytest.raises(ConfigError, match="pretrain.lr: must be > 0"):
        evolve(cfg, lr=0)
    with pytest.raises(ConfigError, match="pretrain.num_heads: must divide"):
        evolve(cfg, hidden_size=100)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("vocab:\n  vocab_sise: 100\n")
    with pytest.raises(ConfigError, match="vocab.vocab_sise"):
        load_config(typo)


def test_round_trip_and_flatten():
    cfg = load_config(None, ["vocab.vocab_size=5000", "score.key_columns=[id]"])
    data = to_dict(cfg)
    assert json.loads(json.dumps(data)) == data and data["score"]["key_columns"] == ["id"]  # plain JSON, lists
    assert from_dict(PipelineConfig, data) == cfg
    assert to_dict({"frozen_from": "v1", "ids": (1, 2)}) == {"frozen_from": "v1", "ids": [1, 2]}  # settings dicts too
    again = load_config(None, [])
    assert data["vocab"]["vocab_size"] == 5000 and to_dict(again)["vocab"]["vocab_size"] == 30522
    flat = flatten(data)
    assert flat["vocab.vocab_size"] == 5000
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_schema_describes_every_key_with_its_default():
    schema = PipelineConfig.model_json_schema()
    sections = {name: schema["$defs"][prop["$ref"].split("/")[-1]]
                for name, prop in schema["properties"].items() if "$ref" in prop}
    assert set(sections) == {"ingest", "vocab", "mask", "pretrain", "finetune", "distill", "score", "flow"}
    for where, model in [("", schema), *sections.items()]:
        for key, prop in model["properties"].items():
            assert prop.get("description"), f"{where}.{key} has no description"
            assert "default" in prop, f"{where}.{key} has no default"
    assert sections["mask"]["properties"]["masked_lm_prob"]["exclusiveMaximum"] == 1
    assert sections["ingest"]["properties"]["inputs"]["items"]["format"] == "path"
    assert RUNTIME_KEYS <= set(sections["pretrain"]["properties"])


def test_configs_load_without_torch():
    code = "import sys, bertflow.bert_core.config; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
