"""The pipeline's whole configuration: one typed section per stage.

Presets live in ``configs/*.yaml`` (sections ``ingest``, ``vocab``, ``mask``,
``pretrain``, ``finetune``, ``distill``, ``score``, plus ``flow`` for orchestration) and load
by name (``tiny``) or path; ``--set section.key=value`` overrides any key. Relative
paths inside a YAML file are relative to that file; those in overrides and defaults
to the current directory. Unknown keys and bad values raise
:class:`~bertflow.bert_core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

import bertflow
from bertflow.bert_core.configtools import Config, apply_overrides, from_dict, load_yaml, resolve_paths, to_dict
from bertflow.bert_core.distill.config import DistillConfig
from bertflow.bert_core.errors import ConfigError
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.flowconfig import FlowConfig
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.vocab.config import VocabConfig

STAGES = ("ingest", "vocab", "mask", "pretrain", "finetune", "score")  # what a pipeline run does by default
OPTIONAL_STAGES = ("distill",)  # run only when asked for (``--stages finetune,distill``, ``bertflow distill``)
ALL_STAGES = ("ingest", "vocab", "mask", "pretrain", "finetune", "distill", "score")  # in pipeline order


class PipelineConfig(Config):
    name: str = Field("bertflow", description="MLflow experiment name")
    ingest: IngestConfig = Field(
        IngestConfig(), description="Ingestion: raw files to clean, deduplicated corpus shards")
    vocab: VocabConfig = Field(VocabConfig(), description="WordPiece vocabulary trained on the corpus")
    mask: MaskConfig = Field(MaskConfig(), description="Masked-LM training rows built from the corpus")
    pretrain: PretrainConfig = Field(
        PretrainConfig(), description="BERT pretraining: model shape, optimisation, budgets")
    finetune: FinetuneConfig = Field(FinetuneConfig(), description="Fine-tuning a classifier on labelled data")
    distill: DistillConfig = Field(
        DistillConfig(), description="Distilling the fine-tuned classifier into a smaller student (optional stage)")
    score: ScoreConfig = Field(ScoreConfig(), description="Bulk scoring of a Parquet lake with the classifier")
    flow: FlowConfig = Field(FlowConfig(), description="Retries, timeouts and continuation (not stage content)")

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self)


def presets_dir() -> Path:
    """The packaged presets: beside the package in a wheel, at the repository root in a checkout."""
    package = Path(bertflow.__file__).parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def find_config(name_or_path: str | Path) -> Path:
    """An existing YAML file, else the packaged preset of that name (``tiny`` -> ``configs/tiny.yaml``)."""
    path = Path(name_or_path)
    if path.is_file() or os.sep in str(name_or_path) or "/" in str(name_or_path):
        return path  # load_yaml says "not found" for a missing path
    preset = presets_dir() / f"{path.name.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in presets_dir().glob("*.yaml")))
    raise ConfigError(f"no config file or preset named {str(name_or_path)!r} (presets: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML preset (a file or a preset name; None: the defaults) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path:
        file = find_config(path)
        data = resolve_paths(PipelineConfig, load_yaml(file), file.parent)
    return from_dict(PipelineConfig, apply_overrides(data, list(overrides)))
