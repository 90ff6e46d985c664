"""Write a fine-tuned model as a plain Hugging Face directory (Auto classes load it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

META_FILE = "bertflow_finetune.json"  # task, max length, label names, QA settings: what predict needs beyond config.json


def export_model(model, tokenizer, dst: str | Path, meta: dict[str, Any], base_dir: str | Path | None = None) -> Path:
    """Save weights (safetensors), config with id2label/label2id, tokenizer files and our small meta file.

    ``vocab.txt`` is copied from ``base_dir`` when the tokenizer did not write one
    (transformers 5 saves only tokenizer.json), so older transformers and slow
    tokenizers load the directory too.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    from bertflow.bert_core.finetune.model import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(str(dst))
        tokenizer.save_pretrained(str(dst))
    if base_dir is not None and not (dst / "vocab.txt").exists() and (Path(base_dir) / "vocab.txt").is_file():
        shutil.copyfile(Path(base_dir) / "vocab.txt", dst / "vocab.txt")
    (dst / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return dst


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """Our meta file, or what can be inferred from config.json for a directory exported elsewhere."""
    model_dir = Path(model_dir)
    path = model_dir / META_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    task = "sequence"
    if any(a.endswith("ForTokenClassification") for a in archs):
        task = "token"
    elif any(a.endswith("ForQuestionAnswering") for a in archs):
        task = "qa"
    return {"task": task, "max_length": min(512, int(config.get("max_position_embeddings", 512)))}
