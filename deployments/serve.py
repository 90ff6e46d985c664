"""Single-box scheduling without a work pool: ``python deployments/serve.py``.

Serves the same two nightly deployments as ``prefect.yaml`` from this process
(it needs a Prefect API: ``prefect server start`` in another terminal and
``PREFECT_API_URL=http://127.0.0.1:4200/api``).
"""

from __future__ import annotations

from prefect import serve

from bertflow.flows.pipeline import pipeline

TIMEZONE = "Europe/London"
# The same parameters as deployments/prefect.yaml (a test checks they agree).
NIGHTLY_OVERRIDES = ["flow.continue_from_champion=true", "pretrain.budget_minutes=20"]
SCORE_OVERRIDES = ["score.input=data/lake", "score.model_uri=models:/bertflow-tiny-books@champion"]


def build() -> list:
    """The two nightly deployments, with the schedules and parameters of ``prefect.yaml``."""
    nightly = pipeline.to_deployment(
        name="nightly-pipeline",
        cron="0 2 * * *",
        parameters={"config": "configs/tiny.yaml", "workspace": "workspace", "overrides": NIGHTLY_OVERRIDES},
        tags=["bertflow", "nightly"],
    )
    score = pipeline.to_deployment(
        name="nightly-score",
        cron="30 4 * * *",
        parameters={"config": "configs/tiny.yaml", "workspace": "workspace", "stages": ["score"],
                    "overrides": SCORE_OVERRIDES},
        tags=["bertflow", "nightly"],
    )
    for dep in (nightly, score):
        for sched in dep.schedules or []:
            sched.schedule.timezone = TIMEZONE
    return [nightly, score]


def main() -> None:
    serve(*build())


if __name__ == "__main__":
    main()
