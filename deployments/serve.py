"""Single-box scheduling without a work pool: ``python -m bertflow.deployments.serve``.

Serves the same deployments as ``prefect.yaml`` (two nightly ones, a paused weekly sweep) from this process
(it needs a Prefect API: ``prefect server start`` in another terminal and
``PREFECT_API_URL=http://127.0.0.1:4200/api``). The configs come from the packaged
``tiny`` preset, so this works from an installed wheel too.
"""

from __future__ import annotations

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from bertflow.bert_core.config import PipelineConfig, load_config
from bertflow.bert_core.sweep.space import load_space
from bertflow.flows.pipeline import pipeline
from bertflow.flows.sweep import sweep

TIMEZONE = "Europe/London"
# The same settings as deployments/prefect.yaml (a test checks they agree).
NIGHTLY_OVERRIDES = ["flow.continue_from_champion=true", "pretrain.budget_minutes=20"]
SCORE_OVERRIDES = ["score.model_uri=models:/bertflow-tiny-books@champion"]
# One run of each deployment at a time; an overlapping run waits its turn instead of failing on the workspace lock.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
SWEEP = {"trials": 8, "parallel": 2}  # the weekly sweep: the tiny space over the tiny preset's fine-tuning


def nightly_configs() -> dict[str, PipelineConfig]:
    """The config of each nightly deployment, by deployment name."""
    return {"nightly-pipeline": load_config("tiny", NIGHTLY_OVERRIDES),
            "nightly-score": load_config("tiny", SCORE_OVERRIDES)}


def build() -> list:
    """The deployments of ``prefect.yaml``, with its schedules and parameters (the weekly sweep paused)."""
    configs = nightly_configs()
    nightly = pipeline.to_deployment(
        name="nightly-pipeline",
        cron="0 2 * * *",
        parameters={"config": configs["nightly-pipeline"], "workspace": "workspace"},
        tags=["bertflow", "nightly"],
        concurrency_limit=ONE_AT_A_TIME,
    )
    score = pipeline.to_deployment(
        name="nightly-score",
        cron="30 4 * * *",
        parameters={"config": configs["nightly-score"], "workspace": "workspace", "stages": ["score"]},
        tags=["bertflow", "nightly"],
        concurrency_limit=ONE_AT_A_TIME,
    )
    for dep in (nightly, score):
        for sched in dep.schedules or []:
            sched.schedule.timezone = TIMEZONE
    weekly = sweep.to_deployment(
        name="weekly-sweep",
        schedule=Cron("0 3 * * 0", timezone=TIMEZONE, active=False),
        parameters={"config": load_config("tiny"), "space": load_space("tiny"), "workspace": "workspace", **SWEEP},
        tags=["bertflow", "weekly"],
        concurrency_limit=ONE_AT_A_TIME,
    )
    return [nightly, score, weekly]


def main() -> None:
    serve(*build())


if __name__ == "__main__":
    main()
