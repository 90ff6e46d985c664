"""A pipeline's parent MLflow run, made to be compared with others in the experiment's run table.

The run is named after the config and the time (``bertflow-tiny 2026-12-05 17:04``) unless the
user names it; it carries provenance tags (bertflow version, git commit of the checkout, device),
a description (``mlflow.note.content``: the stage table and a link to the Prefect flow run), the
datasets the pipeline read, and each stage's headline metrics under stage-prefixed names
(``pretrain.final_loss``, ``finetune.accuracy``, ``score.rows_per_s``), so two pipelines compare
side by side without opening their stage runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertflow.bert_core.config import STAGES, PipelineConfig
from bertflow.tasks import tracking
from bertflow.tasks.stage_runner import StageRun

# The numbers that tell two runs of a stage apart; the stage runs keep all the others.
HEADLINES: dict[str, tuple[str, ...]] = {
    "ingest": ("docs_out", "bytes_in"),
    "vocab": ("vocab_size", "unk_rate", "tokens_per_word"),
    "mask": ("sequences", "tokens", "tokens_per_s"),
    "pretrain": ("final_loss", "mlm_accuracy", "nsp_accuracy", "steps", "tokens_per_s"),
    "finetune": ("accuracy", "macro_f1", "entity_f1", "piece_entity_f1", "token_accuracy", "best_epoch"),
    "distill": ("accuracy", "entity_f1", "teacher_eval_metric", "agreement_with_teacher", "compression", "speedup"),
    "score": ("rows_scored", "rows_error", "files_failed", "rows_per_s"),
}
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description


def run_name(config_name: str, stages: list[str], started: float, override: str | None = None) -> str:
    """``<config> <YYYY-MM-DD HH:MM>``; a subset of stages adds their names (``bertflow-tiny score ...``)."""
    if override:
        return override
    scope = "" if list(stages) == list(STAGES) else " " + "+".join(stages)
    return f"{config_name}{scope} {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"


def provenance_tags(cfg: PipelineConfig, stages: list[str]) -> dict[str, str]:
    """Which code, and which device, made this run: ``bertflow.version``, ``bertflow.git_commit``, ``bertflow.device``."""
    from bertflow import __version__

    tags = {"bertflow.version": __version__, "bertflow.device": device(cfg, stages)}
    commit = git_commit()
    if commit is not None:
        sha, dirty = commit
        tags.update({"bertflow.git_commit": sha, "mlflow.source.git.commit": sha,
                     "bertflow.git_dirty": str(dirty).lower()})
    return tags


@functools.cache
def git_commit() -> tuple[str, bool] | None:
    """``(sha, uncommitted changes?)`` of the checkout bertflow runs from; None for an installed wheel."""
    import bertflow

    root = Path(bertflow.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:  # e.g. a venv inside some other repo
            return None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None


def device(cfg: PipelineConfig, stages: list[str]) -> str:
    """The devices the model stages of this run ask for, ``auto`` resolved here (``cpu``, ``cuda (NVIDIA H100)``)."""
    wanted = {getattr(cfg, s).device for s in ("pretrain", "finetune", "score") if s in stages}
    if not wanted:
        return "cpu"
    gpu = None
    if wanted - {"cpu"}:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    resolved = sorted({("cuda" if gpu else "cpu") if d == "auto" else d for d in wanted})
    return ", ".join(resolved) + (f" ({gpu})" if gpu and any(d.startswith("cuda") for d in resolved) else "")


def headline_metrics(results: Mapping[str, StageRun]) -> dict[str, float]:
    """Each stage's headline numbers and wall time as ``<stage>.<metric>``, for the parent run."""
    out: dict[str, float] = {}
    for stage, run in results.items():
        for key in HEADLINES.get(stage, ()):
            if isinstance(run.metrics.get(key), (int, float)):
                out[f"{stage}.{key}"] = float(run.metrics[key])
        out[f"{stage}.seconds"] = float(run.seconds)
    return out


def stage_table(results: Mapping[str, StageRun], run_link: Callable[[str], str]) -> list[str]:
    """The stage table as markdown lines: seconds, reused, headline numbers, a link to each stage run."""
    lines = ["| stage | seconds | reused | headline | MLflow run |", "|---|---:|---|---|---|"]
    for stage, r in results.items():
        keys = [k for k in HEADLINES.get(stage, ()) if k in r.metrics] or list(r.metrics)[:3]
        head = ", ".join(f"{k}={_fmt(r.metrics[k])}" for k in keys)
        lines.append(f"| {stage} | {r.seconds:.1f} | {'yes' if r.reused else 'no'} | {head} | "
                     f"[{r.run_id[:8]}]({run_link(r.run_id)}) |")
    return lines


def description(cfg_name: str, stages: list[str], experiment_id: str, flow_run: Any,
                results: Mapping[str, StageRun] | None = None, status: str = "running") -> str:
    """The parent run's description: what ran, its status, the stage table, where the Prefect flow run is."""
    lines = [f"**{cfg_name}**: {' → '.join(stages)} · {status}", "", f"Prefect flow run: {prefect_link(flow_run)}"]
    if results:
        lines += ["", *stage_table(results, lambda run_id: f"#/experiments/{experiment_id}/runs/{run_id}")]
    return "\n".join(lines)


def prefect_link(flow_run: Any) -> str:
    """A markdown link to the flow run in the Prefect UI, or its name and id when no UI serves it (ephemeral API)."""
    from prefect.settings import PREFECT_UI_URL

    label = f"{flow_run.name} ({flow_run.id})"
    ui = PREFECT_UI_URL.value()
    return f"[{label}]({ui.rstrip('/')}/runs/flow-run/{flow_run.id})" if ui else f"`{label}` (ephemeral Prefect API)"


def pipeline_inputs(uri: str, results: Mapping[str, StageRun], workspace: str) -> list:
    """The stages' input datasets from outside the workspace (raw files, labelled data, the lake, a registry model):
    what this pipeline read, as opposed to what one stage handed the next."""
    c = tracking.client(uri)
    inside = Path(workspace).resolve().as_uri() + "/"
    seen: set[tuple[str, str]] = set()
    found = []
    for result in results.values():
        for item in c.get_run(result.run_id).inputs.dataset_inputs:
            context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), None)
            source = json.loads(item.dataset.source or "{}").get("uri", "")
            key = (item.dataset.name, item.dataset.digest)
            if context == "input" and not source.startswith(inside) and key not in seen:
                seen.add(key)
                found.append(item)
    return found


@dataclass(frozen=True)
class ParentRun:
    """The parent run of one pipeline flow run, and what it needs to describe itself when the stages are done."""

    uri: str
    experiment_id: str
    run_id: str
    config_name: str
    stages: list[str]
    flow_run: Any
    workspace: str

    @contextlib.contextmanager
    def recording(self, results: dict[str, StageRun]) -> Iterator[None]:
        """Run the stages (into ``results``) in the block; then, failed or not, describe the run (:meth:`finish`)."""
        t0 = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            try:
                self.finish(results, time.perf_counter() - t0, exc)
            except Exception as describe:  # the stage's error is the one to raise
                logging.getLogger(__name__).warning("could not describe failed run %s: %s", self.run_id, describe)
            raise
        self.finish(results, time.perf_counter() - t0)

    def finish(self, results: Mapping[str, StageRun], seconds: float, error: BaseException | None = None) -> None:
        """Copy the stages' headline metrics and outside inputs onto the parent run and describe how it went."""
        tracking.log_metrics(self.uri, self.run_id, {**headline_metrics(results), "pipeline_seconds": seconds})
        inputs = pipeline_inputs(self.uri, results, self.workspace)
        if inputs:
            tracking.client(self.uri).log_inputs(self.run_id, datasets=inputs)
        if error is None:
            status = f"finished in {seconds:.1f}s"
        else:
            failed = next((s for s in self.stages if s not in results), "?")
            status = f"failed at {failed}: {(str(error).splitlines() or [type(error).__name__])[0][:300]}"
        note = description(self.config_name, self.stages, self.experiment_id, self.flow_run, results, status)
        tracking.set_tags(self.uri, self.run_id, {NOTE_TAG: note})


def start(uri: str, experiment_id: str, cfg: PipelineConfig, stages: list[str], flow_run: Any, workspace: str,
          name: str | None = None) -> ParentRun:
    """Create the parent run, named, tagged and described."""
    run_id = tracking.start_run(
        uri, experiment_id, run_name=run_name(cfg.name, stages, time.time(), name),
        tags={"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": flow_run.name,
              "bertflow.stages": ",".join(stages), "bertflow.config_name": cfg.name,
              **provenance_tags(cfg, stages), NOTE_TAG: description(cfg.name, stages, experiment_id, flow_run)},
    )
    return ParentRun(uri, experiment_id, run_id, cfg.name, list(stages), flow_run, workspace)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
