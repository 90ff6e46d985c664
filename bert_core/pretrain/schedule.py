"""Learning-rate schedule fitted to whichever budget ends first (steps or wall clock).

Progress ``p`` runs from 0 to 1: ``max(step / max_steps, elapsed / budget_minutes)``.
With a wall-clock budget the decay follows elapsed time, as in cramming, so the LR
reaches its floor exactly when the time runs out however fast the steps are.

Warmup is counted in optimizer steps (linear from ``1/warmup`` to 1). The decay then
runs over the progress left after warmup: from 1 at ``warmup_end`` (the progress at
which warmup finished, recorded once and checkpointed) to ``min_lr_ratio`` at p = 1.
With a step budget this is exactly transformers' ``get_linear_schedule_with_warmup``
(shifted by one step, so the first step does not waste itself at LR 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup_steps: int
    kind: str  # linear | cosine | constant
    min_lr_ratio: float
    max_steps: int
    budget_minutes: float | None

    def progress(self, step: int, elapsed_minutes: float) -> float:
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

    def lr_at(self, step: int, progress: float, warmup_end: float | None) -> float:
        """LR for optimizer step ``step`` (0-based) at training progress ``progress``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        start = warmup_end if warmup_end is not None else 0.0
        q = 1.0 if start >= 1.0 else min(max((progress - start) / (1.0 - start), 0.0), 1.0)
        decay = 1.0 - q if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * q))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay)
