"""The config system: presets, overrides, and clear errors naming the key at fault."""

from __future__ import annotations

import pytest

from bertflow.bert_core.config import PipelineConfig, load_config
from bertflow.bert_core.configtools import apply_overrides, flatten, to_dict
from bertflow.bert_core.errors import ConfigError


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_presets_load(repo_root, preset):
    cfg = load_config(repo_root / "configs" / f"{preset}.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.name.startswith("bertflow")


def test_override_sets_typed_value(repo_root):
    cfg = load_config(repo_root / "configs/tiny.yaml", ["mask.masked_lm_prob=0.3", "pretrain.budget_minutes=2"])
    assert cfg.mask.masked_lm_prob == 0.3
    assert cfg.pretrain.budget_minutes == 2.0
    assert cfg.pretrain.hidden_size == 64  # untouched preset value


def test_override_list_and_null(repo_root):
    cfg = load_config(None, ["ingest.inputs=[a.txt, b/*.jsonl]", "finetune.valid_path=null"])
    assert cfg.ingest.inputs == ("a.txt", "b/*.jsonl")
    assert cfg.finetune.valid_path is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("mask.nope=1", "unknown config key 'mask.nope'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("mask.masked_lm_prob=high", "mask.masked_lm_prob: expected a number"),
        ("mask.masked_lm_prob=1.5", "mask.masked_lm_prob must be in (0, 1)"),
        ("mask.recipe=electra", "mask.recipe: 'electra' is not one of"),
        ("pretrain.num_layers=two", "pretrain.num_layers: expected an integer"),
        ("pretrain.compile=maybe", "pretrain.compile: expected true or false"),
        ("pretrain.hidden_size=100", "divisible by pretrain.num_heads"),
        ("mask", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert fragment in str(exc.value)


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
    cfg = load_config(None, ["vocab.vocab_size=5000"])
    data = to_dict(cfg)
    again = load_config(None, [])
    assert data["vocab"]["vocab_size"] == 5000 and to_dict(again)["vocab"]["vocab_size"] == 30522
    flat = flatten(data)
    assert flat["vocab.vocab_size"] == 5000
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
