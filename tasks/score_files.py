"""Scoring files on Ray (``score.runner: ray``): one Prefect task per file, mapped over a task runner.

``bert_core.score.stage.run`` plans, checks the model, commits and writes the manifest
for every runner; the :class:`MappedScorer` here only decides where each file is
scored: in a Prefect task run on prefect-ray's ``RayTaskRunner`` (a local Ray by
default, ``score.ray_address`` for a cluster), one GPU per task when this machine has
GPUs. We map over files, never rows: a task run costs milliseconds, a file holds
millions of rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prefect import task, unmapped
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner

from bertflow.bert_core.errors import BertflowError
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.results import FileJob, FileResult
from bertflow.bert_core.score.stage import FileScorer, FileWork, RowsFn
from bertflow.tasks.stages import IO_OPTIONS


@task(name="score-file", **IO_OPTIONS)  # transient errors retry with backoff; a bad file is a result
def score_file_task(work: FileWork, job: FileJob) -> FileResult:
    """Score one input file into its output file (idempotent: a committed file returns at once)."""
    return work(job)


@dataclass(frozen=True)
class MappedScorer:
    """A FileScorer that maps :func:`score_file_task` over the jobs with the task runner ``make_runner`` builds."""

    make_runner: Callable[[], TaskRunner]

    def __call__(self, jobs: Sequence[FileJob], work: FileWork, on_rows: RowsFn) -> Iterator[FileResult]:
        if not jobs:
            return
        with self.make_runner() as runner, gpu_options():
            futures = runner.map(score_file_task, {"work": unmapped(work), "job": list(jobs)})
            for future in as_completed(list(futures)):
                yield future.result()


def file_scorer(cfg: ScoreConfig) -> FileScorer | None:
    """The scorer ``cfg.runner`` names; None: one file after another in this process (``run``'s default)."""
    if cfg.runner == "ray":
        return MappedScorer(lambda: ray_runner(cfg.ray_address))
    return None


def ray_runner(address: str | None, num_cpus: int | None = None) -> TaskRunner:
    """A RayTaskRunner on a local Ray (or the cluster at ``address``)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BertflowError("score.runner ray needs prefect-ray: pip install 'bertflow[ray]'") from exc
    init = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        init["num_cpus"] = num_cpus or 2
    return RayTaskRunner(address=address, init_kwargs=init)


def gpu_options():
    """Ray remote options asking for one GPU per file task when this machine has GPUs."""
    try:
        import torch

        if torch.cuda.is_available():
            from prefect_ray.context import remote_options

            return remote_options(num_gpus=1)
    except ImportError:
        pass
    return contextlib.nullcontext()
