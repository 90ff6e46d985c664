"""How the pipeline flow runs its stages: retries, backoff, timeouts, continuation.

These knobs change how a run is orchestrated, not what a stage computes, so they
are not part of any stage's reuse key. They live beside the stage sections in
the YAML (section ``flow``) so a deployment sets them like any other key.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertflow.bert_core.configtools import check


@dataclass(frozen=True)
class FlowConfig:
    retries: int = 2  # retries of the stages that touch files or servers (ingest, vocab, mask, score)
    retry_delays_s: tuple[float, ...] = (5.0, 30.0)  # backoff between those retries; the last delay repeats
    retry_jitter: float = 0.2  # each delay may grow by up to this fraction, so retries do not stampede a server
    data_stage_timeout_minutes: float = 180.0  # a data stage (ingest, vocab, mask, score) running longer fails
    train_stage_timeout_minutes: float = 1440.0  # pretrain / finetune wall-clock cap (plus their own budgets)
    continue_from_champion: bool = False  # pretrain from the base of the registry's champion, keeping its vocabulary

    def __post_init__(self) -> None:
        check(self.retries >= 0, "flow.retries must be >= 0")
        check(len(self.retry_delays_s) >= 1 and all(d >= 0 for d in self.retry_delays_s),
              "flow.retry_delays_s must be a non-empty list of seconds >= 0")
        check(self.retry_jitter >= 0, "flow.retry_jitter must be >= 0")
        check(self.data_stage_timeout_minutes > 0, "flow.data_stage_timeout_minutes must be > 0")
        check(self.train_stage_timeout_minutes > 0, "flow.train_stage_timeout_minutes must be > 0")

    def retry_delays(self) -> list[float]:
        """One delay per retry, as Prefect's ``retry_delay_seconds`` list takes them."""
        d = list(self.retry_delays_s)
        return [d[min(i, len(d) - 1)] for i in range(self.retries)]
