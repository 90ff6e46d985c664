"""Fine-tuning stage: base BERT + labelled file -> exported classifier (or QA model), metrics, predictions.

Output directory (built atomically)::

    model/                  HF directory: config.json (id2label/label2id), model.safetensors,
                            tokenizer files, bertflow_finetune.json (task, max_length; qa: doc_stride,
                            max_answer_length, null_threshold)
    metrics.json            headline metrics, per-class figures, confusion matrix, per-epoch history
    confusion_matrix.png    sequence task only (skipped where matplotlib is missing)
    predictions.parquet     the validation set with gold labels and our predictions
    manifest.json           config, input digests, counts, versions

Extractive question answering (``task: qa``) runs the same training loop and export
through :mod:`bert_core.finetune.qa_stage`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bertflow.bert_core.finetune.check_export import compare_with_export
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.data import LabelledData, load_data
from bertflow.bert_core.finetune.encode import Encoded, encode_texts, encode_words, require_fast
from bertflow.bert_core.finetune.evaluate import HEADLINE, PREDICTIONS, Evaluation, evaluate, predictions_table
from bertflow.bert_core.finetune.export import export_model
from bertflow.bert_core.finetune.infer import infer
from bertflow.bert_core.finetune.labels import continuation_ids
from bertflow.bert_core.finetune.model import (
    autocast_dtype,
    build_model,
    check_model_dir,
    cpu_threads,
    load_tokenizer,
    max_positions,
    resolve_device,
)
from bertflow.bert_core.finetune.plots import save_confusion_png
from bertflow.bert_core.finetune.report import STAGE, manifest, stage_details, write_parquet
from bertflow.bert_core.finetune.train import train
from bertflow.bert_core.safeload import require_safe_weights
from bertflow.bert_core.stageio import EpochFn, MetricsFn, ProgressFn, StageResult, atomic_dir, write_manifest


def run(
    cfg: FinetuneConfig,
    base_model_dir: str | Path,
    out_dir: str | Path,
    on_metrics: MetricsFn | None = None,
    on_progress: ProgressFn | None = None,
    on_epoch: EpochFn | None = None,
) -> StageResult:
    """Fine-tune ``base_model_dir`` (or ``cfg.base_model``) on ``cfg.train_path`` and write ``out_dir``.

    ``on_epoch(epoch, metrics)`` runs after each epoch's validation: True stops training there,
    an exception (a pruned sweep trial) aborts the run before anything is written.
    """
    t0 = time.monotonic()
    base = check_model_dir(cfg.base_model or base_model_dir)
    require_safe_weights(base, cfg.allow_pickle_weights, "--set finetune.allow_pickle_weights=true")
    out_dir = Path(out_dir)
    if cfg.task == "qa":
        from bertflow.bert_core.finetune.qa_stage import run_qa

        return run_qa(cfg, base, out_dir, on_metrics, on_progress, on_epoch)
    data = load_data(cfg)  # every input error surfaces here, before any model is loaded
    names = data.label_names
    max_length = min(cfg.max_length, max_positions(base))  # a longer input would index past the position table

    with cpu_threads(cfg.num_threads) as threads:
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        device = resolve_device(cfg.device)
        amp = autocast_dtype(device, cfg.bf16, cfg.cpu_bf16)
        tokenizer = load_tokenizer(base)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        missing_id = names.index("O") if "O" in names else 0
        continuation = piece_tags(cfg, names)
        train_enc, valid_enc = encode_data(cfg.task, tokenizer, data, max_length, str(base), continuation=continuation)
        model = build_model(base, cfg.task, names, cfg.allow_pickle_weights).to(device)

        def evaluate_with(m, dtype) -> Evaluation:
            outputs = infer(m, valid_enc, cfg.eval_batch_size, device, dtype, pad_id, missing_id)
            return evaluate(data.valid, outputs, names, piece_level=continuation is not None)

        t_train = time.monotonic()
        outcome = train(
            model, train_enc, lambda m: evaluate_with(m, amp), cfg, device, amp, pad_id, on_metrics, on_progress,
            on_epoch,
        )
        train_seconds = time.monotonic() - t_train
        # Final figures in fp32, the precision the exported model is loaded in by default.
        final = outcome.best_eval if outcome.best_eval_fp32 else evaluate_with(model, None)

        metrics = {
            **final.metrics,
            "train_examples": float(len(data.train)),
            "valid_examples": float(len(data.valid)),
            "epochs_run": float(outcome.epochs_run),
            "best_epoch": float(outcome.best_epoch),
            "steps": float(outcome.steps),
            "train_seconds": train_seconds,
        }
        eval_digest = data.valid.digest()
        meta = {
            "task": cfg.task,
            "max_length": max_length,
            "label_names": names,
            "text_pair": cfg.text_pair_column is not None,
            "headline_metric": HEADLINE[cfg.task],
            **({"label_pieces": cfg.label_pieces} if cfg.task == "token" else {}),
        }
        with atomic_dir(out_dir) as tmp:
            export_model(model, tokenizer, tmp / "model", meta, base_dir=base)
            export_check = compare_with_export(tmp / "model", data.valid, final.outputs, device, cfg.eval_batch_size)
            write_parquet(predictions_table(data.valid, final.outputs, names), tmp / PREDICTIONS)
            title = f"validation confusion matrix ({len(data.valid)} examples)"
            has_png = cfg.task == "sequence" and save_confusion_png(
                final.confusion, names, tmp / "confusion_matrix.png", title
            )
            report = {
                "task": cfg.task,
                "headline_metric": HEADLINE[cfg.task],
                "metrics": metrics,
                "per_class": final.per_class,
                "confusion_matrix": final.confusion,
                "label_names": names,
                "eval_set_digest": eval_digest,
                "valid_source": data.valid_source,
                "stop_reason": outcome.stop_reason,
                "history": outcome.history,
            }
            (tmp / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
            runtime = {"device": str(device), "autocast": str(amp) if amp else None, "cpu_threads": threads,
                       "wall_seconds": time.monotonic() - t0}
            counts = {"train_examples": len(data.train), "valid_examples": len(data.valid), "labels": len(names)}
            write_manifest(tmp, manifest(cfg, base, counts, metrics, eval_digest, runtime))

    details = stage_details(out_dir, cfg.task, max_length, eval_digest, data.valid_source, outcome, export_check,
                            per_class=final.per_class,
                            confusion_png=str(out_dir / "confusion_matrix.png") if has_png else None,
                            label_map={n: i for i, n in enumerate(names)})
    return StageResult(stage=STAGE, path=str(out_dir), metrics=metrics, details=details)


def piece_tags(cfg: FinetuneConfig, names: list[str]) -> list[int] | None:
    """The token task's tags for a word's later pieces under ``cfg.label_pieces``; None otherwise."""
    return continuation_ids(names, cfg.label_pieces) if cfg.task == "token" else None


def encode_data(task: str, tokenizer, data: LabelledData, max_length: int, where: str, train_ids=None,
                valid_ids=None, continuation: list[int] | None = None) -> tuple[Encoded, Encoded]:
    """Model inputs of the training and validation examples; label ids default to the data's own
    (distillation passes them renumbered as its teacher numbers its labels); ``continuation``: the
    token task's tags for later word pieces (:func:`continuation_ids`)."""
    train_ids = data.train_ids if train_ids is None else train_ids
    valid_ids = data.valid_ids if valid_ids is None else valid_ids
    if task == "token":
        require_fast(tokenizer, f"tokenizer of {where}")
        return (encode_words(tokenizer, data.train.words, train_ids, max_length, continuation),
                encode_words(tokenizer, data.valid.words, valid_ids, max_length, continuation))
    return (encode_texts(tokenizer, data.train.texts, data.train.pairs, train_ids, max_length),
            encode_texts(tokenizer, data.valid.texts, data.valid.pairs, valid_ids, max_length))
