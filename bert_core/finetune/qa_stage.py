"""Fine-tuning for extractive question answering: the stage's QA path, same loop, export and outputs.

Writes what the classification path writes: ``model/`` (an ``AutoModelForQuestionAnswering``
directory whose ``bertflow_finetune.json`` holds ``doc_stride``, ``max_answer_length`` and,
for SQuAD 2.0 data, ``version_2_with_negative`` and the ``null_threshold`` chosen on
validation), ``metrics.json`` (exact match, F1; v2.0 HasAns/NoAns), ``predictions.parquet``
(one row per validation question) and ``manifest.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bertflow.bert_core.finetune.check_export import compare_qa_export
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.evaluate import HEADLINE, Evaluation
from bertflow.bert_core.finetune.export import export_model
from bertflow.bert_core.finetune.infer import infer_spans
from bertflow.bert_core.finetune.model import (autocast_dtype, build_model, cpu_threads, load_tokenizer,
                                               max_positions, resolve_device)
from bertflow.bert_core.finetune.qa import encode_qa, evaluate_qa, load_qa_data, predictions_table, windowing
from bertflow.bert_core.finetune.report import STAGE, manifest, stage_details, write_parquet
from bertflow.bert_core.finetune.train import train
from bertflow.bert_core.stageio import EpochFn, MetricsFn, ProgressFn, StageResult, atomic_dir, write_manifest


def run_qa(cfg: FinetuneConfig, base: Path, out_dir: Path, on_metrics: MetricsFn | None = None,
           on_progress: ProgressFn | None = None, on_epoch: EpochFn | None = None) -> StageResult:
    """Fine-tune ``base`` for question answering on ``cfg.train_path`` and write ``out_dir``."""
    t0 = time.monotonic()
    data = load_qa_data(cfg)  # every input error surfaces here, before any model is loaded
    max_length = min(cfg.max_length, max_positions(base))
    with cpu_threads(cfg.num_threads) as threads:
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        amp = autocast_dtype(device, cfg.bf16, cfg.cpu_bf16)
        tokenizer = load_tokenizer(base)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        win = windowing(tokenizer, cfg, max_length)
        train_enc, _ = encode_qa(win, tokenizer, data.train, targets=True)
        valid_enc, valid_windows = encode_qa(win, tokenizer, data.valid, targets=False)
        model = build_model(base, "qa", [], cfg.allow_pickle_weights).to(device)
        last_outputs = {}

        def evaluate_with(m, dtype) -> Evaluation:
            outputs = infer_spans(m, valid_enc, cfg.eval_batch_size, device, dtype, pad_id)
            last_outputs["spans"] = outputs
            return evaluate_qa(outputs, valid_windows, data.valid, cfg.max_answer_length, data.version)

        t_train = time.monotonic()
        outcome = train(model, train_enc, lambda m: evaluate_with(m, amp), cfg, device, amp, pad_id, on_metrics,
                        on_progress, on_epoch)
        train_seconds = time.monotonic() - t_train
        final = evaluate_with(model, None)  # the best epoch's weights, in fp32: also the export check's reference
        metrics = {
            **final.metrics,
            "train_examples": float(len(data.train)),
            "valid_examples": float(len(data.valid)),
            "train_windows": float(len(train_enc)),
            "epochs_run": float(outcome.epochs_run),
            "best_epoch": float(outcome.best_epoch),
            "steps": float(outcome.steps),
            "train_seconds": train_seconds,
        }
        eval_digest = data.valid.digest()
        v2 = data.version == "2.0"
        meta = {
            "task": "qa",
            "max_length": max_length,
            "doc_stride": cfg.doc_stride,
            "max_answer_length": cfg.max_answer_length,
            "version_2_with_negative": v2,
            "null_threshold": final.outputs.null_threshold if v2 else None,
            "headline_metric": HEADLINE["qa"],
        }
        with atomic_dir(out_dir) as tmp:
            export_model(model, tokenizer, tmp / "model", meta, base_dir=base)
            export_check = compare_qa_export(tmp / "model", data.valid, last_outputs["spans"], valid_windows, device,
                                             cfg.eval_batch_size)
            write_parquet(predictions_table(data.valid, final.outputs, data.version), tmp / "predictions.parquet")
            report = {
                "task": "qa",
                "headline_metric": HEADLINE["qa"],
                "squad_version": data.version,
                "metrics": metrics,
                "per_class": {},
                "confusion_matrix": None,
                "label_names": [],
                "eval_set_digest": eval_digest,
                "valid_source": data.valid_source,
                "valid_groups": sorted(set(data.valid.groups)) if data.valid_source == "split" else None,
                "stop_reason": outcome.stop_reason,
                "history": outcome.history,
            }
            (tmp / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
            runtime = {"device": str(device), "autocast": str(amp) if amp else None, "cpu_threads": threads,
                       "wall_seconds": time.monotonic() - t0}
            counts = {"train_examples": len(data.train), "valid_examples": len(data.valid),
                      "train_windows": len(train_enc), "valid_windows": len(valid_enc)}
            write_manifest(tmp, manifest(cfg, base, counts, metrics, eval_digest, runtime))

    details = stage_details(out_dir, "qa", max_length, eval_digest, data.valid_source, outcome, export_check,
                            squad_version=data.version, null_threshold=meta["null_threshold"], per_class={},
                            confusion_png=None, label_map={})
    return StageResult(stage=STAGE, path=str(out_dir), metrics=metrics, details=details)
