"""The fine-tuning loop: AdamW, linear warmup and decay (``bert_core.optim``), early stopping, best-epoch weights."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bertflow.bert_core.finetune.batching import bucketed_batches, collate
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.encode import IGNORE, Encoded
from bertflow.bert_core.finetune.evaluate import HEADLINE, Evaluation
from bertflow.bert_core.finetune.model import autocast
from bertflow.bert_core.optim import Schedule, build_optimizer, set_lr
from bertflow.bert_core.stageio import EpochFn, MetricsFn, ProgressFn, report


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class TrainOutcome:
    best_epoch: int
    epochs_run: int
    steps: int
    best_eval: Evaluation
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    best_eval_fp32: bool = True  # False when the best evaluation ran under bf16 autocast


def train(
    model: torch.nn.Module,
    train_enc: Encoded,
    evaluate_fn: Callable[[torch.nn.Module], Evaluation],
    cfg: FinetuneConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    pad_id: int,
    on_metrics: MetricsFn | None = None,
    on_progress: ProgressFn | None = None,
    on_epoch: EpochFn | None = None,
    loss_fn: LossFn | None = None,
) -> TrainOutcome:
    """Train for ``cfg.epochs`` (or until early stopping, ``max_steps``, the time budget or ``on_epoch``
    says stop), evaluating after every epoch; the model ends holding the best epoch's weights.

    ``loss_fn(model, batch)`` replaces the supervised loss (distillation: the teacher's soft labels);
    it runs under the same autocast."""
    start_time = time.monotonic()
    budget_s = cfg.budget_minutes * 60 if cfg.budget_minutes else math.inf
    token_task = train_enc.word_starts is not None
    usable = np.arange(len(train_enc))
    if token_task:  # sentences whose words all vanished carry no signal (and a mean over nothing is NaN)
        usable = np.flatnonzero([any(x != IGNORE for x in lab) for lab in train_enc.labels])
    lengths = train_enc.lengths[usable]
    steps_per_epoch = math.ceil(len(usable) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total_steps)

    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, device)
    schedule = Schedule(cfg.lr, warmup, "linear", min_lr_ratio=0.0, max_steps=total_steps, warmup_pad=1)
    rng = np.random.default_rng(cfg.seed)
    pad_multiple = 8 if device.type == "cuda" else 1
    num_labels = model.config.num_labels

    step, best, best_epoch, bad_epochs = 0, -math.inf, 0, 0
    shown: dict[str, float] = {}  # the last validation's headline, for progress displays
    best_state, best_eval = None, None
    history: list[dict] = []
    stop_reason = "epochs"
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        loss_n, epoch_loss, epoch_n = 0, 0.0, 0
        out_of_budget = False
        for batch_idx in bucketed_batches(lengths, cfg.batch_size, rng, cfg.bucket_batches):
            batch = collate(train_enc, usable[batch_idx], pad_id, pad_multiple)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if loss_fn is None:
                loss = batch_loss(model, batch, num_labels, device, amp_dtype)
            else:
                with autocast(device, amp_dtype):
                    loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            set_lr(optimizer, schedule.lr_at(step))
            optimizer.step()
            step += 1
            loss_sum += loss.detach()
            loss_n += 1
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = float(loss_sum) / loss_n  # one device sync per log, not per step
                epoch_loss, epoch_n = epoch_loss + mean_loss * loss_n, epoch_n + loss_n
                loss_sum.zero_()
                loss_n = 0
                if on_metrics:
                    on_metrics(step, {"train_loss": mean_loss, "lr": schedule.lr_at(step), "epoch": epoch})
                report(on_progress, step, total_steps, "steps", epoch=epoch, loss=mean_loss, **shown)
            if step >= total_steps:
                out_of_budget, stop_reason = True, "max_steps"
                break
            if time.monotonic() - start_time > budget_s:
                out_of_budget, stop_reason = True, "budget_minutes"
                break
        if loss_n:
            epoch_loss, epoch_n = epoch_loss + float(loss_sum), epoch_n + loss_n
        ev = evaluate_fn(model)
        record = {"epoch": epoch, "step": step, "train_loss": epoch_loss / max(1, epoch_n), **ev.metrics}
        history.append(record)
        if on_metrics:
            on_metrics(step, {"valid_" + k: v for k, v in ev.metrics.items()} | {"epoch": epoch})
        shown = {"valid_" + HEADLINE[cfg.task]: ev.headline}
        report(on_progress, step, total_steps, "steps", epoch=epoch, **shown)
        if ev.headline > best:
            best, best_epoch, bad_epochs, best_eval = ev.headline, epoch, 0, ev
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if on_epoch is not None and on_epoch(epoch, {"train_loss": record["train_loss"], **ev.metrics}):  # e.g. a sweep's pruner (which may raise)
            stop_reason = "on_epoch"
            break
        if out_of_budget:
            if stop_reason == "max_steps" and epoch == cfg.epochs:
                stop_reason = "epochs"
            break
        if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
            stop_reason = "early_stopping"
            break
    report(on_progress, total_steps, total_steps, "steps", epoch=epoch, **shown)
    assert best_state is not None and best_eval is not None
    model.load_state_dict(best_state)
    return TrainOutcome(best_epoch, epoch, step, best_eval, stop_reason, history, best_eval_fp32=amp_dtype is None)


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_labels: int, device: torch.device,
               amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Cross-entropy of a batch: over labels (sequence), over first word pieces (token), or the mean of the
    answer start and end positions' (qa, as BERT's SQuAD fine-tuning). Logits are upcast to fp32 first."""
    labels = batch.pop("labels", None)
    starts, ends = batch.pop("start_positions", None), batch.pop("end_positions", None)
    with autocast(device, amp_dtype):
        out = model(**batch)
    if starts is not None:
        return (F.cross_entropy(out.start_logits.float(), starts) + F.cross_entropy(out.end_logits.float(), ends)) / 2
    return F.cross_entropy(out.logits.float().reshape(-1, num_labels), labels.reshape(-1), ignore_index=IGNORE)
