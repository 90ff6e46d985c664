"""How the pipeline flow runs its stages: retries, backoff, timeouts, continuation.

These knobs change how a run is orchestrated, not what a stage computes, so they
are not part of any stage's reuse key. They live beside the stage sections in
the YAML (section ``flow``) so a deployment sets them like any other key.
"""

from __future__ import annotations

from pydantic import Field, NonNegativeFloat

from bertflow.bert_core.configtools import Config


class FlowConfig(Config):
    section = "flow"

    retries: int = Field(
        2, ge=0, description="Retries of the stages that touch files or servers (ingest, vocab, mask, score)")
    retry_delays_s: tuple[NonNegativeFloat, ...] = Field(
        (5.0, 30.0), min_length=1, description="Backoff between those retries (seconds); the last delay repeats")
    retry_jitter: float = Field(
        0.2, ge=0, description="Each delay may grow by up to this fraction, so retries do not stampede a server")
    data_stage_timeout_minutes: float = Field(
        180.0, gt=0, description="A data stage (ingest, vocab, mask, score) running longer fails")
    train_stage_timeout_minutes: float = Field(
        1440.0, gt=0, description="Pretrain / finetune wall-clock cap (on top of their own budgets)")
    continue_from_champion: bool = Field(
        False, description="Pretrain from the base of the registry's champion, keeping its vocabulary")

    def retry_delays(self) -> list[float]:
        """One delay per retry, as Prefect's ``retry_delay_seconds`` list takes them."""
        d = list(self.retry_delays_s)
        return [d[min(i, len(d) - 1)] for i in range(self.retries)]
