"""Bulk scoring as its own flow, mapping one task per input file over a task runner.

``--runner local`` (default) scores files in a thread pool of one; ``--runner ray``
uses prefect-ray's ``RayTaskRunner`` (a local Ray by default, ``ray_address`` for a
cluster) and asks for one GPU per task when the driver sees GPUs. We map over
files, never rows: a Prefect task run costs milliseconds, a file holds millions of rows.
The flow holds the output lock, plans (skipping committed files), maps, and writes
the run manifest, so the exactly-once protocol is the same as ``bertflow score``'s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from bertflow.bert_core.errors import BertflowError
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.stageio import StageResult, raise_if_disk_full
from bertflow.tasks.stage_runner import TrackingContext, run_stage
from bertflow.tasks.stages import IO_OPTIONS


@task(name="score-file", **IO_OPTIONS)  # transient errors retry with backoff; a bad file is a result
def score_file_task(cfg: ScoreConfig, job: Any, model_dir: str, model_uri: str) -> dict[str, Any]:
    """Score one input file into its output file (idempotent: a committed file returns at once)."""
    from bertflow.bert_core.score.stage import score_file

    try:
        return score_file(cfg, job, model_dir, model_uri=model_uri)
    except BertflowError as exc:  # a bad file is reported, the others go on
        return {"input": job.rel_path, "output": job.output_path, "status": "failed", "reason": str(exc)}
    except OSError as exc:  # a full disk fails the run with one clear line (the next file would fail too)
        raise_if_disk_full(exc, job.output_path)
        raise


def score_mapped(cfg: ScoreConfig, model_dir: str, model_uri: str, out_dir: str, on_progress=None) -> StageResult:
    """Lock, plan, map ``score_file_task`` over the pending files, write the run manifest."""
    from bertflow.bert_core.score.commit import read_commit
    from bertflow.bert_core.score.stage import clean_stale_temps, output_lock, plan, write_run_manifest

    t0 = time.perf_counter()
    out = Path(out_dir)
    with output_lock(out):
        stale = clean_stale_temps(out)
        jobs = plan(cfg, out, model_dir=model_dir)
        pending = [j for j in jobs if not j.committed]
        results = [
            {"input": j.rel_path, "output": j.output_path, "status": "skipped",
             **{k: int((read_commit(j.output_path) or {}).get(k, 0)) for k in ("rows_in", "rows_out", "rows_scored", "rows_error")}}
            for j in jobs if j.committed
        ]
        futures = score_file_task.map(unmapped(cfg), pending, unmapped(model_dir), unmapped(model_uri))
        for i, fut in enumerate(futures, 1):
            results.append(fut.result())
            if on_progress is not None:
                on_progress(i, len(pending))
        return write_run_manifest(cfg, out, jobs, results, seconds=time.perf_counter() - t0, model_dir=model_dir,
                                  model_uri=model_uri, stale_removed=stale)


def ray_runner(address: str | None, num_cpus: int | None = None):
    """A RayTaskRunner on a local Ray (or the cluster at ``address``)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BertflowError("--runner ray needs prefect-ray: pip install 'bertflow[ray]'") from exc
    init = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        init["num_cpus"] = num_cpus or 2
    return RayTaskRunner(address=address, init_kwargs=init)


def gpu_options():
    """Ray remote options asking for one GPU per file task when this machine has GPUs."""
    import contextlib

    try:
        import torch

        if torch.cuda.is_available():
            from prefect_ray.context import remote_options

            return remote_options(num_gpus=1)
    except ImportError:
        pass
    return contextlib.nullcontext()


@flow(name="score-lake-files", task_runner=ThreadPoolTaskRunner(max_workers=1))
def score_files_flow(ctx: TrackingContext, cfg: ScoreConfig, model: str, out_dir: str) -> dict[str, Any]:
    """The mapped scoring stage; run with ``.with_options(task_runner=...)`` to choose the runner."""
    from bertflow.tasks.models import resolve_model

    def body(on_metrics, on_progress):
        model_dir = resolve_model(model, ctx.workspace)
        with gpu_options():
            return score_mapped(cfg, model_dir, model, out_dir, on_progress)

    return run_stage("score", ctx, cfg, body, out_dir, inputs={"model": model, "lake": cfg.input})


def run_score_stage(ctx: TrackingContext, cfg: ScoreConfig, model: str, out_dir: str) -> dict[str, Any]:
    """Score with the runner ``cfg.runner`` names, as a subflow of the calling flow."""
    if cfg.runner == "ray":
        runner = ray_runner(cfg.ray_address)
        return score_files_flow.with_options(task_runner=runner)(ctx, cfg, model, out_dir)
    return score_files_flow(ctx, cfg, model, out_dir)
