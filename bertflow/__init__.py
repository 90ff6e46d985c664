"""bertflow: raw text to scored data lakes, as Prefect flows tracked in MLflow.

One import name for the whole project. The repository keeps one folder per layer
(``bert_core/``, ``tasks/``, ``flows/``, ``deployments/``); ``pyproject.toml`` maps
them to ``bertflow.bert_core``, ``bertflow.tasks``, ``bertflow.flows`` and
``bertflow.deployments``, and ships the presets (``bertflow.configs``) and the
bundled sample (``bertflow.data``) as package data.

The Python API, for notebooks and other orchestrators::

    import bertflow

    run = bertflow.run_pipeline("tiny", workspace="ws")           # all six stages
    scored = bertflow.score("lake/", "models:/bertflow-tiny-books@champion", output="scored/", batch_size=128)
    student = bertflow.distill(None, "tiny", workspace="ws", student_layers=1)  # of the fine-tuned model
    found = bertflow.sweep("tiny", "tiny", workspace="ws", trials=8, parallel=2)  # search space, preset

Importing ``bertflow`` is cheap: the API (and with it Prefect and MLflow) loads on
first use, and ``bertflow.bert_core`` never imports either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "run_pipeline", "score", "distill", "sweep", "load_config", "PipelineConfig", "PipelineResult",
           "StageRun", "ProgressOptions"]

_LAZY = {
    "run_pipeline": "bertflow.api",
    "score": "bertflow.api",
    "distill": "bertflow.api",
    "sweep": "bertflow.api",
    "PipelineResult": "bertflow.api",
    "StageRun": "bertflow.api",
    "ProgressOptions": "bertflow.api",
    "load_config": "bertflow.bert_core.config",
    "PipelineConfig": "bertflow.bert_core.config",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from bertflow.api import PipelineResult, ProgressOptions, StageRun, distill, run_pipeline, score, sweep
    from bertflow.bert_core.config import PipelineConfig, load_config


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bertflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
