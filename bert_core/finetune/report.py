"""What every fine-tuning run writes beside its model: the manifest and Parquet tables."""

from __future__ import annotations

from pathlib import Path

import torch

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.stageio import file_digest, model_dir_digest

STAGE = "finetune"


def manifest(cfg: FinetuneConfig, base: Path, counts: dict, metrics: dict, eval_digest: str, runtime: dict) -> dict:
    import transformers

    return {
        "stage": STAGE,
        "config": to_dict(cfg),
        "inputs": {
            "train_path": str(cfg.train_path),
            "train_digest": file_digest(cfg.train_path),
            "valid_path": cfg.valid_path,
            "valid_digest": file_digest(cfg.valid_path) if cfg.valid_path else None,
            "base_model": str(base),
            "base_model_digest": model_dir_digest(base),
        },
        "counts": counts,
        "metrics": metrics,
        "eval_set_digest": eval_digest,
        "runtime": {**runtime, "torch": torch.__version__, "transformers": transformers.__version__},
    }


def write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd")


def stage_details(out_dir: str | Path, task: str, max_length: int, eval_digest: str, valid_source: str, outcome,
                  export_check: dict, **extra) -> dict:
    """The ``details`` every training stage returns (fine-tune, QA, distillation): where the model is,
    what it was evaluated on, how training ended; ``extra`` adds the stage's own keys."""
    return {"model_dir": str(Path(out_dir) / "model"), "task": task, "max_length": max_length, **extra,
            "eval_set_digest": eval_digest, "valid_source": valid_source, "stop_reason": outcome.stop_reason,
            "history": outcome.history, "export_check": export_check}
