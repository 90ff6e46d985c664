"""The pipeline's whole configuration: one typed section per stage.

Presets live in ``configs/*.yaml`` (sections ``ingest``, ``vocab``, ``mask``,
``pretrain``, ``finetune``, ``score``, plus ``flow`` for orchestration);
``--set section.key=value`` overrides any key. Unknown keys and bad values raise
:class:`~bert_core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertflow.bert_core.configtools import apply_overrides, from_dict, load_yaml, to_dict
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.flowconfig import FlowConfig
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.vocab.config import VocabConfig

STAGES = ("ingest", "vocab", "mask", "pretrain", "finetune", "score")


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "bertflow"  # MLflow experiment name
    ingest: IngestConfig = field(default_factory=IngestConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)  # retries, timeouts, continuation (not stage content)

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a YAML preset (or the defaults) and apply ``key=value`` overrides."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(PipelineConfig, data)
