"""Optimizers and learning-rate schedules, shared by pretraining and fine-tuning.

Weight decay as in BERT: matrices and embeddings decay, biases and LayerNorm weights
(every parameter of rank < 2) do not. AdamW runs fused on CUDA (one kernel for the
whole update) and with ``foreach`` elsewhere; LAMB (``bert_core.lamb``) is there for
very large batches.

The schedule is a linear warmup over optimizer steps, then a linear or cosine decay to
``min_lr_ratio`` (or a constant LR), fitted to whichever budget ends first: progress
``p = max(step / max_steps, elapsed / budget_minutes)``. With a wall-clock budget the
decay follows elapsed time, as in cramming, so the LR reaches its floor exactly when the
time runs out however fast the steps are; the progress at which warmup ended is
recorded once (and checkpointed) so the decay starts from it. With only a step budget the
decay is exactly transformers' ``get_linear_schedule_with_warmup``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bertflow.bert_core.lamb import Lamb


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (as BERT does)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    kind: Literal["adamw", "lamb"] = "adamw",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA, ``foreach`` elsewhere) or LAMB over :func:`param_groups`."""
    groups = param_groups(model, weight_decay)
    if kind == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup_steps: int
    kind: str  # linear | cosine | constant
    min_lr_ratio: float
    max_steps: int
    budget_minutes: float | None = None
    # warmup LR at step s is lr * (s + 1) / (warmup_steps + warmup_pad): pretraining reaches the peak on the
    # last warmup step (0); fine-tuning has always stopped one step short of it (1), kept so its results stay
    warmup_pad: int = 0

    def progress(self, step: int, elapsed_minutes: float = 0.0) -> float:
        p = step / self.max_steps
        if self.budget_minutes is not None:
            p = max(p, elapsed_minutes / self.budget_minutes)
        return min(p, 1.0)

    def warmup_end(self, step: int, progress: float, recorded: float | None) -> float | None:
        """The progress at which warmup ended (``recorded`` once known)."""
        if recorded is not None:
            return recorded
        if step >= self.warmup_steps:
            return progress
        return None

    def lr_at(self, step: int, progress: float | None = None, warmup_end: float | None = None) -> float:
        """LR for optimizer step ``step`` (0-based); ``progress`` and ``warmup_end`` count under a time budget."""
        if step < self.warmup_steps:
            return self.lr * ((step + 1) / (self.warmup_steps + self.warmup_pad))
        if self.kind == "constant":
            return self.lr
        left = self._decay_left(step, progress, warmup_end)
        decay = left if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * (1.0 - left)))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay)

    def _decay_left(self, step: int, progress: float | None, warmup_end: float | None) -> float:
        """The fraction of the decay still ahead: 1 when warmup ends, 0 at the end of the budget."""
        if self.budget_minutes is None:  # in steps: warmup ended at warmup_steps
            return max(0.0, (self.max_steps - step) / max(1, self.max_steps - self.warmup_steps))
        start = warmup_end if warmup_end is not None else 0.0
        p = progress if progress is not None else self.progress(step)
        return 0.0 if start >= 1.0 else min(max((1.0 - p) / (1.0 - start), 0.0), 1.0)
