"""Seeing a run: live progress in a terminal, periodic log lines elsewhere, and output free of noise.

The end-to-end tests read what `bertflow pipeline` printed when run as `make demo` runs it, once on a
pseudo-terminal and once without one (the ``cli_pipelines`` fixture).
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from bertflow.bert_core.stageio import Progress, report
from bertflow.tasks.console import JsonLines
from bertflow.tasks.progress import LogLines, ProgressOptions, StageProgress, stage_progress
from tests.helpers import plain, warning_lines

PRETRAIN_LINE = re.compile(r"pretrain\b.*?\b(\d+)/(\d+) steps\b.*?\bloss (\d+\.\d+)")
FINETUNE_LINE = re.compile(r"finetune (\d+)/(\d+) steps\b.*\bepoch \d+ · loss \d+\.\d+")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logger():
    log = logging.getLogger("test.progress")
    log.setLevel(logging.INFO)
    handler = Records()
    log.addHandler(handler)
    yield log, handler.records
    log.removeHandler(handler)


def test_report_gives_plain_callbacks_counts_and_displays_the_whole_event():
    counts, events = [], []

    class Display:
        def __call__(self, done, total):
            raise AssertionError("a display gets events")

        def event(self, progress):
            events.append(progress)

    report(lambda d, t: counts.append((d, t)), 3, 10, "steps", loss=1.5)
    report(Display(), 3, 10, "steps", loss=1.5, checkpoint=None)
    report(None, 3, 10, "steps")
    assert counts == [(3, 10)]
    assert events == [Progress(3, 10, "steps", {"loss": 1.5})]  # None values are left out


def test_log_lines_every_interval_with_rate_eta_and_the_numbers_last_reported(logger):
    log, records = logger
    clock = Clock()
    sink = StageProgress("pretrain", [LogLines(log, 10.0, "text", clock)], clock=clock)
    for step in range(1, 31):  # one step a second; the loss reported at steps 5, 15 and 25 only
        clock.now += 1.0
        sink.event(Progress(step, 30, "steps", {"loss": 7.52 - step / 10} if step % 10 == 5 else {}))
    sink.close()
    lines = [r.getMessage() for r in records]
    assert lines == [  # after 10, 20 and 30 seconds, and the closing line
        "pretrain 10/30 steps (33%) | 1 steps/s | ETA 0:20 | loss 7.02",
        "pretrain 20/30 steps (67%) | 1 steps/s | ETA 0:10 | loss 6.02",
        "pretrain 30/30 steps (100%) | 1 steps/s | ETA 0:00 | loss 5.02",
        "pretrain 30/30 steps (100%) | 1 steps/s | done in 0:30 | loss 5.02",
    ]
    assert all(r.progress["stage"] == "pretrain" for r in records)  # the fields ride along for JSON formatters


def test_short_stage_writes_no_progress_line(logger):
    log, records = logger
    clock = Clock()
    sink = StageProgress("ingest", [LogLines(log, 30.0, "text", clock)], clock=clock)
    sink(6, 6)  # a bare (done, total) count: the stage's unit is filled in
    sink.close()
    assert records == [] and sink.last.unit == "files"


def test_json_lines_are_one_object_each_with_the_progress_fields(logger):
    log, records = logger
    clock = Clock()
    sink = StageProgress("score", [LogLines(log, 1.0, "json", clock)], clock=clock)
    clock.now += 2
    sink.event(Progress(500, 1000, "rows", {"files_done": 1, "files_failed": 0, "rows_per_s": 907.3}))
    message = json.loads(records[0].getMessage())
    assert message["stage"] == "score" and message["done"] == 500 and message["percent"] == 50.0
    assert message["metrics"] == {"files_done": 1, "files_failed": 0, "rows_per_s": 907.3}
    assert sink.last.numbers() == "files_done 1 · files_failed 0 · 907 rows/s"
    line = JsonLines().format(records[0])
    assert "\n" not in line and json.loads(line)["unit"] == "rows" and json.loads(line)["level"] == "INFO"
    plain_record = logging.LogRecord("prefect", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert json.loads(JsonLines().format(plain_record))["message"] == "disk full"


def test_quiet_shows_nothing_and_no_terminal_means_log_lines(logger):
    log, records = logger
    with stage_progress("pretrain", ProgressOptions(quiet=True), log, terminal=False) as sink:
        assert not any(isinstance(v, LogLines) for v in sink.views)
    with stage_progress("pretrain", ProgressOptions(log_interval_s=5), log, terminal=False) as sink:
        (lines,) = [v for v in sink.views if isinstance(v, LogLines)]
        assert lines.interval_s == 5
    with stage_progress("pretrain", ProgressOptions(log_format="json"), log, terminal=True) as sink:
        assert any(isinstance(v, LogLines) for v in sink.views)  # JSON is for machines: never a live display
    assert records == []


def test_progress_lines_reach_the_prefect_run_logs(prefect_harness, tmp_path):
    """What the Prefect UI shows for a flow run: its logs in the API, progress lines among them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from bertflow.api import run_pipeline
    from bertflow.tasks import tracking

    task_logs = logging.getLogger("prefect.task_runs")
    level = task_logs.level
    task_logs.setLevel(logging.INFO)  # the test session keeps Prefect at WARNING; a user's default is INFO
    try:
        result = run_pipeline("tiny", stages=["ingest"], workspace=tmp_path / "ws",
                              progress=ProgressOptions(log_interval_s=0.001))
    finally:
        task_logs.setLevel(level)
    APILogWorker.drain_all(timeout=30)
    flow_run_id = tracking.client(result.tracking_uri).get_run(result.parent_run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    progress = [log.message for log in logs if re.match(r"ingest \d+/\d+ files \(\d+%\)", log.message)]
    assert progress and all(log.task_run_id for log in logs if log.message in progress), [log.message for log in logs]
    assert any("MB/s" in line for line in progress)


@pytest.mark.slow
def test_pipeline_in_a_terminal_shows_live_pretraining_progress(cli_pipelines):
    _, (run, _) = cli_pipelines
    assert run.terminal
    text = plain(run.output)
    end = text.index("pretrain finished in")
    updates = [m for m in PRETRAIN_LINE.finditer(text[:end]) if int(m[1]) < int(m[2])]
    assert updates, text[-4000:]  # a step count and a loss, drawn before the stage ended
    assert "\x1b[2K" in run.output  # drawn in place (erase line), not written as log lines


@pytest.mark.slow
def test_pipeline_without_a_terminal_logs_progress_every_interval(cli_pipelines):
    _, (_, run) = cli_pipelines
    assert not run.terminal and "\x1b[" not in run.output  # no colours, no live display
    lines = [line for line in run.output.splitlines() if FINETUNE_LINE.search(line)]
    assert len(lines) >= 2, run.output[-4000:]
    assert any(int(FINETUNE_LINE.search(line)[1]) < int(FINETUNE_LINE.search(line)[2]) for line in lines)
    assert all(" | INFO    | Task run 'finetune" in line for line in lines)  # Python logging, the task's run logger


@pytest.mark.slow
def test_pipeline_prints_no_warning(cli_pipelines):
    _, runs = cli_pipelines
    for run in runs:
        assert warning_lines(run.output) == [], plain(run.output)[-4000:]
        assert "Loading weights" not in run.output and "Downloading artifacts" not in run.output
        assert " INFO mlflow" not in run.output  # MLflow's own INFO narration (tables created, example validated)
