"""A frozen vocabulary: the tokenizer of a model we continue pretraining from, as the vocab stage's output.

Continuing pretraining from a checkpoint needs that checkpoint's token ids: a
vocabulary retrained on tonight's corpus would scramble its embeddings. So instead
of training WordPiece, the vocab stage copies the base model's tokenizer files into
its output directory, and masking and pretraining use them as usual.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import StageResult, atomic_dir, write_manifest
from bertflow.bert_core.vocab.stage import TOKENIZER_FILES, tokenizer_fingerprint

REQUIRED_FILES = ("tokenizer.json", "vocab.txt")  # what a base model dir must hold to give its vocabulary


def run(base_model_dir: str | Path, out_dir: str | Path) -> StageResult:
    """Copy ``base_model_dir``'s tokenizer files to ``out_dir`` (atomically) with a manifest saying where from."""
    started = time.perf_counter()
    base = Path(base_model_dir)
    missing = [name for name in REQUIRED_FILES if not (base / name).is_file()]
    if missing:
        raise InputError(f"{base} cannot provide a frozen vocabulary: {', '.join(missing)} missing "
                         "(a bertflow pretraining export or a Hugging Face BERT directory with a fast tokenizer)")
    with atomic_dir(out_dir) as tmp:
        copied = [name for name in TOKENIZER_FILES if (base / name).is_file()]
        for name in copied:
            shutil.copy2(base / name, tmp / name)
        vocab_size = sum(1 for _ in (tmp / "vocab.txt").open(encoding="utf-8"))
        write_manifest(tmp, {
            "stage": "vocab",
            "frozen_from": str(base),
            "files": copied,
            "vocab_size": vocab_size,
            "vocab_fingerprint": tokenizer_fingerprint(tmp),
            "elapsed_s": round(time.perf_counter() - started, 3),
        })
    metrics = {"vocab_size": float(vocab_size), "frozen": 1.0}
    return StageResult("vocab", str(out_dir), metrics, {"frozen_from": str(base), "copied": copied})
