"""Distillation stage: a fine-tuned teacher + its labelled data (+ unlabeled text) -> a smaller student.

The student trains on the teacher's temperature-softened predictions (and the gold labels
where there are some) with the fine-tune stage's own loop, batching, early stopping and
validation, so its figures are comparable with the teacher's: same validation set, same
metric, same evaluation digest. Output directory (built atomically), as the fine-tune
stage's::

    model/               HF directory (the student), bertflow_finetune.json also says ``distilled_from``
    metrics.json         the student's metrics, the teacher's, their agreement, sizes and rows/s
    predictions.parquet  the validation set with gold labels and the student's predictions
    manifest.json        config, teacher, data digests, counts, versions
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bertflow.bert_core.configtools import evolve, to_dict
from bertflow.bert_core.distill.config import DistillConfig
from bertflow.bert_core.distill.data import concat, encode_unlabeled, read_unlabeled
from bertflow.bert_core.distill.loss import DistillLoss
from bertflow.bert_core.distill.student import (
    count_parameters,
    encoder_layers,
    every_kth_layer,
    from_checkpoint,
    from_config,
    slice_teacher,
)
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.finetune.check_export import compare_with_export
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.data import LabelledData, load_data
from bertflow.bert_core.finetune.encode import Encoded
from bertflow.bert_core.finetune.evaluate import HEADLINE, PREDICTIONS, Evaluation, evaluate, predictions_table
from bertflow.bert_core.finetune.export import export_model, read_meta
from bertflow.bert_core.finetune.infer import SequenceOutputs, infer
from bertflow.bert_core.finetune.model import (
    autocast_dtype,
    check_model_dir,
    cpu_threads,
    load_finetuned,
    load_tokenizer,
    max_positions,
    resolve_device,
)
from bertflow.bert_core.finetune.report import stage_details, write_parquet
from bertflow.bert_core.finetune.stage import encode_data, piece_tags
from bertflow.bert_core.finetune.train import train
from bertflow.bert_core.stageio import (
    MetricsFn,
    ProgressFn,
    StageResult,
    atomic_dir,
    file_digest,
    model_dir_digest,
    write_manifest,
)

STAGE = "distill"


def run(
    cfg: DistillConfig,
    data_cfg: FinetuneConfig,
    teacher_dir: str | Path,
    out_dir: str | Path,
    teacher_ref: str | None = None,
    on_metrics: MetricsFn | None = None,
    on_progress: ProgressFn | None = None,
) -> StageResult:
    """Distill the classifier in ``teacher_dir`` into a student trained on ``data_cfg``'s labelled data.

    ``data_cfg`` is the fine-tune section: its training file, validation split, text and label
    columns, max length, device and threads. ``teacher_ref`` names the teacher in the export's
    metadata (``name/N`` for a registry version; default the directory).
    """
    t0 = time.monotonic()
    teacher_dir = check_model_dir(teacher_dir, "teacher")
    meta = read_meta(teacher_dir)
    task = str(meta.get("task", "sequence"))
    if task not in ("sequence", "token"):
        raise InputError(f"teacher {teacher_dir} is a {task} model: distillation takes a sequence or token "
                         "classifier")
    if data_cfg.task != task:
        raise InputError(f"teacher {teacher_dir} is a {task} model but finetune.task is {data_cfg.task!r}: the "
                         "student trains on the teacher's kind of labelled data")
    if cfg.unlabeled and data_cfg.text_pair_column:
        raise ConfigError("distill.unlabeled: the teacher reads text pairs (finetune.text_pair_column) and unlabeled "
                          "files hold single texts")
    data = load_data(data_cfg)
    max_length = min(int(meta.get("max_length") or data_cfg.max_length), max_positions(teacher_dir))

    with cpu_threads(data_cfg.num_threads) as threads:
        torch.manual_seed(cfg.seed)
        device = resolve_device(data_cfg.device)
        amp = autocast_dtype(device, data_cfg.bf16, data_cfg.cpu_bf16)
        tokenizer = load_tokenizer(teacher_dir)
        teacher = load_finetuned(teacher_dir, task).to(device).eval()
        names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
        train_ids, valid_ids = _teacher_label_ids(data, names, teacher_dir)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        missing_id = names.index("O") if "O" in names else 0
        continuation = piece_tags(data_cfg, names)
        train_enc, valid_enc = encode_data(task, tokenizer, data, max_length, str(teacher_dir), train_ids, valid_ids,
                                           continuation)
        unlabeled = 0
        if cfg.unlabeled:
            texts = read_unlabeled(cfg.unlabeled, cfg.unlabeled_column, cfg.unlabeled_limit, cfg.seed)
            train_enc, unlabeled = concat(train_enc, encode_unlabeled(tokenizer, texts, task, max_length, continuation)), len(texts)

        student, layer_map = _build_student(cfg, teacher, task)
        student = student.to(device)

        def evaluate_with(m, dtype) -> Evaluation:
            outputs = infer(m, valid_enc, data_cfg.eval_batch_size, device, dtype, pad_id, missing_id)
            return evaluate(data.valid, outputs, names, piece_level=continuation is not None)

        teacher_eval = evaluate_with(teacher, None)
        loss = DistillLoss(teacher, cfg.temperature, cfg.alpha, cfg.hidden_weight, layer_map)
        train_cfg = evolve(data_cfg, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                           warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                           early_stopping_patience=cfg.early_stopping_patience, max_steps=cfg.max_steps,
                           budget_minutes=cfg.budget_minutes, seed=cfg.seed)
        t_train = time.monotonic()
        outcome = train(student, train_enc, lambda m: evaluate_with(m, amp), train_cfg, device, amp, pad_id,
                        on_metrics, on_progress, loss_fn=loss)
        train_seconds = time.monotonic() - t_train
        final = outcome.best_eval if outcome.best_eval_fp32 else evaluate_with(student, None)
        speed = _rows_per_second(cfg.speed_rows, valid_enc, teacher, student, data_cfg.eval_batch_size, device,
                                 pad_id, missing_id)
        teacher_params, student_params = count_parameters(teacher), count_parameters(student)
        metrics = {
            **final.metrics,
            "teacher_eval_metric": teacher_eval.headline,
            "agreement_with_teacher": agreement(final.outputs, teacher_eval.outputs),
            "teacher_parameters": float(teacher_params),
            "student_parameters": float(student_params),
            "compression": teacher_params / student_params,
            "student_layers": float(student.config.num_hidden_layers),
            "teacher_layers": float(teacher.config.num_hidden_layers),
            **speed,
            "train_examples": float(len(data.train)),
            "unlabeled_examples": float(unlabeled),
            "valid_examples": float(len(data.valid)),
            "epochs_run": float(outcome.epochs_run),
            "best_epoch": float(outcome.best_epoch),
            "steps": float(outcome.steps),
            "train_seconds": train_seconds,
        }
        eval_digest = data.valid.digest()
        export_meta = {**meta, "task": task, "max_length": max_length, "label_names": names,
                       "headline_metric": HEADLINE[task], "distilled_from": teacher_ref or str(teacher_dir)}
        with atomic_dir(out_dir) as tmp:
            export_model(student, tokenizer, tmp / "model", export_meta, base_dir=teacher_dir)
            export_check = compare_with_export(tmp / "model", data.valid, final.outputs, device,
                                               data_cfg.eval_batch_size)
            write_parquet(predictions_table(data.valid, final.outputs, names), tmp / PREDICTIONS)
            report = {"task": task, "headline_metric": HEADLINE[task], "metrics": metrics,
                      "teacher_metrics": teacher_eval.metrics, "per_class": final.per_class,
                      "confusion_matrix": final.confusion, "label_names": names, "eval_set_digest": eval_digest,
                      "layer_map": list(layer_map), "stop_reason": outcome.stop_reason, "history": outcome.history}
            (tmp / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
            write_manifest(tmp, _manifest(cfg, data_cfg, teacher_dir, teacher_ref, metrics, eval_digest,
                                          {"device": str(device), "cpu_threads": threads,
                                           "wall_seconds": time.monotonic() - t0}))

    details = stage_details(out_dir, task, max_length, eval_digest, data.valid_source, outcome, export_check,
                            teacher=teacher_ref or str(teacher_dir), teacher_metrics=teacher_eval.metrics,
                            layer_map=list(layer_map), label_map={n: i for i, n in enumerate(names)})
    return StageResult(stage=STAGE, path=str(out_dir), metrics=metrics, details=details)


def _teacher_label_ids(data: LabelledData, names: list[str], teacher_dir: Path):
    """The data's label ids renumbered as the teacher numbers its labels; a label it does not know is an error."""
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in data.label_names if n not in index]
    if unknown:
        raise InputError(f"label {unknown[0]!r} of the training data is not one the teacher {teacher_dir} predicts "
                         f"(its labels: {', '.join(names[:20])})")
    remap = np.array([index[n] for n in data.label_names], dtype=np.int64)
    if isinstance(data.train_ids, list):
        return [remap[np.asarray(a, dtype=np.int64)] for a in data.train_ids], \
            [remap[np.asarray(a, dtype=np.int64)] for a in data.valid_ids]
    return remap[np.asarray(data.train_ids)], remap[np.asarray(data.valid_ids)]


def _build_student(cfg: DistillConfig, teacher: torch.nn.Module, task: str) -> tuple[torch.nn.Module, list[int]]:
    """The student and its layer map (student layer m -> teacher layer) for the hidden-state loss."""
    depth = len(encoder_layers(teacher))
    if cfg.student_init == "teacher":
        keep = list(cfg.teacher_layers) if cfg.teacher_layers is not None else every_kth_layer(depth,
                                                                                                cfg.student_layers)
        return slice_teacher(teacher, keep), keep
    student = from_checkpoint(cfg.student_model, teacher, task) if cfg.student_init == "checkpoint" \
        else from_config(teacher, cfg.student_config.overrides())
    if cfg.hidden_weight > 0 and student.config.hidden_size != teacher.config.hidden_size:
        raise ConfigError(f"distill.hidden_weight needs equal hidden sizes (student {student.config.hidden_size}, "
                          f"teacher {teacher.config.hidden_size}); set it to 0")
    return student, every_kth_layer(depth, student.config.num_hidden_layers)


def agreement(student, teacher) -> float:
    """Share of validation predictions (rows, or words for token models) on which the student and teacher agree."""
    if isinstance(student, SequenceOutputs):
        return float(np.mean(student.pred == teacher.pred)) if len(student.pred) else 0.0
    same = sum(int(np.sum(s == t)) for s, t in zip(student.pred, teacher.pred))
    total = sum(len(s) for s in student.pred)
    return same / total if total else 0.0


def _rows_per_second(rows: int, enc: Encoded, teacher, student, batch_size: int, device: torch.device, pad_id: int,
                     missing_id: int) -> dict[str, float]:
    """Inference rows/s of teacher and student on the same validation rows, fp32 (a warm-up batch first)."""
    if rows == 0 or len(enc) == 0:
        return {}
    idx = list(range(min(rows, len(enc))))
    sample = Encoded([enc.input_ids[i] for i in idx],
                     None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in idx],
                     None if enc.labels is None else [enc.labels[i] for i in idx],
                     None if enc.word_starts is None else [enc.word_starts[i] for i in idx])
    out = {}
    for name, model in (("teacher", teacher), ("student", student)):
        infer(model, Encoded(sample.input_ids[:8], None, None, None if sample.word_starts is None
                             else sample.word_starts[:8]), batch_size, device, None, pad_id, missing_id)
        start = time.perf_counter()
        infer(model, sample, batch_size, device, None, pad_id, missing_id)
        out[f"{name}_rows_per_s"] = len(idx) / max(time.perf_counter() - start, 1e-9)
    out["speedup"] = out["student_rows_per_s"] / out["teacher_rows_per_s"]
    return out


def _manifest(cfg: DistillConfig, data_cfg: FinetuneConfig, teacher_dir: Path, teacher_ref: str | None,
              metrics: dict, eval_digest: str, runtime: dict) -> dict:
    import transformers

    return {
        "stage": STAGE,
        "config": to_dict(cfg),
        "data_config": to_dict(data_cfg),
        "inputs": {
            "teacher": teacher_ref or str(teacher_dir),
            "teacher_dir": str(teacher_dir),
            "teacher_digest": model_dir_digest(teacher_dir),
            "train_path": str(data_cfg.train_path),
            "train_digest": file_digest(data_cfg.train_path),
            "valid_path": data_cfg.valid_path,
            "valid_digest": file_digest(data_cfg.valid_path) if data_cfg.valid_path else None,
            "unlabeled": list(cfg.unlabeled),
        },
        "metrics": metrics,
        "eval_set_digest": eval_digest,
        "runtime": {**runtime, "torch": torch.__version__, "transformers": transformers.__version__},
    }
