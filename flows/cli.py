"""The ``bertflow`` command line (also ``python -m flows``).

``bertflow pipeline`` runs all six stages; ``bertflow ingest|vocab|mask|pretrain|
finetune|score`` runs one, reading its inputs from the workspace; ``bertflow distill``
trains a smaller student from a fine-tuned teacher; ``bertflow sweep`` searches fine-tuning settings. Every command takes the same ``--config``/``--set``/``--workspace``
options, and the stage commands the same output options: ``--run-name`` (the MLflow parent run),
``--quiet``, ``--log-format text|json`` and ``--log-interval`` (progress lines when stdout is not
a terminal). User mistakes
print one line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table

from bertflow.bert_core.config import STAGES, PipelineConfig, load_config
from bertflow.bert_core.configtools import evolve, to_dict
from bertflow.bert_core.errors import BertflowError
from bertflow.flows import workspace as ws_mod
from bertflow.tasks import console as console_mod
from bertflow.tasks.progress import ProgressOptions

if TYPE_CHECKING:  # the flow module imports Prefect: loaded only when a command runs
    from bertflow.flows.pipeline import PipelineResult

# Before Prefect is imported: no telemetry calls (this may be an offline box).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(
    name="bertflow",
    help="Raw text to scored data lakes: ingest -> vocab -> mask -> pretrain -> finetune -> score, "
    "as Prefect flows tracked in MLflow.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[str], typer.Option("--config", "-c", help="Preset name (tiny, small, base) or YAML file (default: built-in defaults).")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set mask.masked_lm_prob=0.2 (repeatable)."),
]
WorkspaceOpt = Annotated[
    Optional[str],
    typer.Option("--workspace", "-w", help=f"Where outputs and the MLflow store go (default ${ws_mod.ENV_VAR} or ./workspace)."),
]

RunNameOpt = Annotated[
    Optional[str], typer.Option("--run-name", help="Name of the MLflow parent run (default: config name and time).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no progress log lines.")]
LogFormatOpt = Annotated[Literal["text", "json"], typer.Option(
    "--log-format",
    help="text, or json: every log line (progress included) one JSON object, and the summary as JSON.")]
LogIntervalOpt = Annotated[float, typer.Option(
    "--log-interval", min=0.1, help="Seconds between progress log lines when stdout is not a terminal.")]


def _show_version(value: bool) -> None:
    if value:
        from bertflow import __version__

        print(f"bertflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Raw text to scored data lakes, as Prefect flows tracked in MLflow."""


def _run_flow(stages: list[str], config: "str | PipelineConfig | None", overrides: list[str] | None,
              workspace: str | None, run_name: str | None = None, quiet: bool = False, log_format: str = "text",
              log_interval: float = 30.0) -> None:
    # Validate what we can before Prefect starts, so user mistakes fail in milliseconds.
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides or [])
    progress = ProgressOptions(quiet=quiet, log_format=log_format, log_interval_s=log_interval)
    console_mod.quiet_third_parties()  # before the libraries load: they read some settings on import
    _quiet_prefect_tracebacks()
    from bertflow.api import run_pipeline

    if log_format == "json":
        console_mod.use_json_lines()  # for the rest of this process, Prefect's temporary server included
    summary = run_pipeline(cfg, stages=stages, workspace=workspace, run_name=run_name, progress=progress)
    if log_format == "json":
        print(json.dumps({"event": "summary", **summary.to_json()}, default=str))
    else:
        _print_summary(summary)


def _print_summary(summary: "PipelineResult") -> None:
    table = Table(title="bertflow: stage outputs")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("reused")
    table.add_column("output")
    table.add_column("headline")
    for stage, r in summary.stages.items():
        head = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(r.metrics.items())[:3])
        table.add_row(stage, f"{r.seconds:.1f}", "yes" if r.reused else "no", r.path, head)
    console.print(table)
    uri = summary.tracking_uri
    console.print(f"Workspace:        {summary.workspace}")
    console.print(f"MLflow store:     {uri}")
    console.print(f"MLflow parent run: {summary.parent_run_id} (experiment {summary.experiment_id})")
    for stage in ("finetune", "distill"):
        run = summary.stages.get(stage)
        if run is not None and run.registry is not None:
            reg = run.registry
            what = "Registered model" if stage == "finetune" else "Registered student"
            console.print(f"{what}: models:/{reg.name}/{reg.version} (alias candidate; "
                          f"champion {'moved' if reg.promoted else 'kept'})")
    console.print(f"Summary JSON:     {Path(summary.workspace) / 'last_run.json'}")
    if uri.startswith("sqlite:"):
        console.print(
            "Open the MLflow UI:  "
            f"[bold]mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000[/bold]  "
            "then browse http://127.0.0.1:5000"
        )


def _quiet_prefect_tracebacks() -> None:
    """Keep Prefect's console logs but drop the traceback it prints for a failed run.

    A failed stage is still reported (its message names the cause); the full
    traceback remains in the Prefect run logs. Set BERTFLOW_DEBUG=1 to see it here.
    """
    if os.environ.get("BERTFLOW_DEBUG"):
        return

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[1] is not None and isinstance(record.exc_info[1], BertflowError):
                record.exc_info = None
                record.exc_text = None
            return True

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.addFilter(_NoTraceback())
        logger.addFilter(_NoTraceback())


@app.command()
def pipeline(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None,
             stages: Annotated[Optional[str], typer.Option(help="Comma-separated subset, e.g. mask,pretrain.")] = None,
             run_name: RunNameOpt = None, quiet: QuietOpt = False, log_format: LogFormatOpt = "text",
             log_interval: LogIntervalOpt = 30.0) -> None:
    """Run the whole pipeline (ingest -> vocab -> mask -> pretrain -> finetune -> score)."""
    chosen = [s.strip() for s in stages.split(",")] if stages else list(STAGES)
    _run_flow(chosen, config, set_, workspace, run_name, quiet, log_format, log_interval)


def _stage_command(stage: str, doc: str):
    def command(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None,
                run_name: RunNameOpt = None, quiet: QuietOpt = False, log_format: LogFormatOpt = "text",
                log_interval: LogIntervalOpt = 30.0) -> None:
        _run_flow([stage], config, set_, workspace, run_name, quiet, log_format, log_interval)

    command.__doc__ = doc
    command.__name__ = stage
    return command


app.command("ingest")(_stage_command(
    "ingest", "Ingest text/JSONL/CSV/TSV/Parquet files (ingest.inputs; globs, .gz, .zst) into a clean Parquet corpus."))
app.command("vocab")(_stage_command(
    "vocab", "Train a WordPiece vocabulary on the workspace corpus; saves a Hugging Face tokenizer directory."))
app.command("mask")(_stage_command(
    "mask", "Generate masked-LM data (mask.recipe full|nsp, static or dynamic masking) from corpus + tokenizer."))
app.command("pretrain")(_stage_command(
    "pretrain", "Pretrain a BERT encoder on the masked data; resumes from the last checkpoint if interrupted."))
app.command("finetune")(_stage_command(
    "finetune", "Fine-tune for classification/NER (finetune.train_path; base: pretrain export or finetune.base_model) "
    "and register the model in MLflow as `candidate`."))


@app.command("distill")
def distill(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None,
            teacher: Annotated[Optional[str], typer.Option(
                help="Fine-tuned classifier to distill: models:/name@champion, runs:/..., or a local HF dir "
                     "(default: distill.teacher, else the workspace's fine-tuned model).")] = None,
            layers: Annotated[Optional[int], typer.Option(
                min=1, help="Student layers, taken from every k-th teacher layer (distill.student_layers).")] = None,
            temperature: Annotated[Optional[float], typer.Option(
                min=0.01, help="Soft-label temperature (distill.temperature).")] = None,
            unlabeled: Annotated[Optional[list[str]], typer.Option(
                help="Extra text for the teacher to label: Parquet/CSV/JSONL/text files or globs (repeatable).")]
            = None,
            run_name: RunNameOpt = None, quiet: QuietOpt = False, log_format: LogFormatOpt = "text",
            log_interval: LogIntervalOpt = 30.0) -> None:
    """Distill a fine-tuned classifier into a smaller student on the fine-tune data (finetune.train_path);
    register it as a new version of the teacher's model with tag `distilled_from`."""
    chosen = {k: v for k, v in (("teacher", teacher), ("student_layers", layers), ("temperature", temperature),
                                ("unlabeled", unlabeled)) if v}
    cfg = load_config(config, set_ or [])
    if chosen:
        cfg = evolve(cfg, distill=evolve(cfg.distill, **chosen))
    _run_flow(["distill"], cfg, [], workspace, run_name, quiet, log_format, log_interval)


@app.command("score")
def score(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None,
          runner: Annotated[Optional[str], typer.Option(help="local (default) or ray: score files in parallel on Ray.")] = None,
          ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
          model: Annotated[Optional[str], typer.Option(help="models:/name@champion, runs:/..., or a local HF dir.")] = None,
          input: Annotated[Optional[str], typer.Option(
              help="Parquet file, directory, glob or hive lake to score: a local path or s3://bucket/prefix/.")] = None,
          output: Annotated[Optional[str], typer.Option(
              help="Where the scored lake goes, local or s3://... (default: score.output, else "
                   "<workspace>/score/<job>).")] = None,
          where: Annotated[Optional[str], typer.Option(
              help="SQL condition on columns and partition keys, e.g. \"dt >= '2026-11-02' AND lang = 'en'\"; "
                   "pruned partitions and row groups are never read.")] = None,
          job: Annotated[Optional[str], typer.Option(
              help="Job name: the default output folder <workspace>/score/<job> (default: from the input).")] = None,
          overwrite: Annotated[bool, typer.Option(
              "--overwrite", help="Replace an output that holds another input's results (else refused).")] = False,
          backend: Annotated[Optional[str], typer.Option(
              help="torch (default); torch-bf16 (bf16 weights, on CPUs with native bf16); onnx or onnx-int8 "
                   "(ONNX Runtime on the CPU). All but torch pass a parity gate against torch fp32 first.")] = None,
          run_name: RunNameOpt = None, quiet: QuietOpt = False, log_format: LogFormatOpt = "text",
          log_interval: LogIntervalOpt = 30.0) -> None:
    """Score a Parquet lake (score.input) with the fine-tuned model or score.model_uri; writes Parquet, exactly once."""
    chosen = {k: v for k, v in (("runner", runner), ("ray_address", ray_address), ("model_uri", model),
                                ("input", input), ("output", output), ("where", where), ("job", job),
                                ("overwrite", overwrite), ("backend", backend)) if v}
    cfg = load_config(config, set_ or [])
    if chosen:
        cfg = evolve(cfg, score=evolve(cfg.score, **chosen))
    _run_flow(["score"], cfg, [], workspace, run_name, quiet, log_format, log_interval)


@app.command("sweep")
def sweep(space: Annotated[str, typer.Option(help="Search space: a YAML file, or a packaged space (tiny).")],
          config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None,
          trials: Annotated[int, typer.Option(help="Trials the study ends with (a rerun counts earlier ones).")] = 20,
          parallel: Annotated[int, typer.Option(help="Trials at once; they share the CPU cores.")] = 1,
          runner: Annotated[str, typer.Option(help="local (threads here) or ray.")] = "local",
          ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
          name: Annotated[Optional[str], typer.Option(help="The sweep's folder under <workspace>/sweep/ "
                                                           "(default: the config's name).")] = None,
          budget_epochs: Annotated[Optional[float], typer.Option(
              help="Compute budget in epochs of training over all trials; no trial starts that could pass it.")]
          = None) -> None:
    """Search fine-tuning settings with Optuna (each trial a nested MLflow run); register the best as `candidate`."""
    from bertflow.bert_core.sweep.space import load_space

    cfg = load_config(config, set_ or [])
    chosen = load_space(space)  # a bad space fails here, before Prefect starts
    _quiet_prefect_tracebacks()
    from bertflow.api import sweep as run_sweep

    result = run_sweep(chosen, cfg, trials=trials, parallel=parallel, runner=runner, ray_address=ray_address,
                       workspace=workspace, name=name, budget_epochs=budget_epochs)
    table = Table(title=f"bertflow sweep {result.study_name}: {len(result.trials)} trials")
    for column in ("trial", "state", "eval_metric", "values"):
        table.add_column(column)
    for t in result.trials:
        values = ", ".join(f"{k.removeprefix('finetune.')}={v:.3g}" if isinstance(v, float) else
                           f"{k.removeprefix('finetune.')}={v}" for k, v in t.params.items())
        table.add_row(str(t.number), t.state, "" if t.value is None else f"{t.value:.4f}", values)
    console.print(table)
    if result.best is not None:
        console.print(f"Best trial:       {result.best.number} (eval_metric {result.best.value:.4f})")
    if result.registration is not None:
        reg = result.registration
        console.print(f"Registered model: models:/{reg.name}/{reg.version} (alias candidate; "
                      f"champion {'moved' if reg.promoted else 'kept'})")
    console.print(f"Study:            {result.study_db} ({result.new_trials} trials run now, "
                  f"{result.epochs_trained} epochs trained in all)")
    console.print(f"MLflow parent run: {result.parent_run_id} (experiment {result.experiment_id})")


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved configuration (preset + overrides) as JSON."""
    console.print_json(json.dumps(to_dict(load_config(config, set_ or []))))


def main() -> None:
    try:
        app()
    except BertflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
