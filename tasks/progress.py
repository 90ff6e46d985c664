"""A running stage's progress, shown where its user looks: the one place that renders ``stageio.Progress``.

``bert_core`` stages report how far they are (``stageio.report``: done, total, unit and
their headline numbers); :func:`stage_progress` turns that into

- a live line per stage (bar, count, rate, ETA, loss/throughput/...) when stdout is a terminal;
- otherwise (a Prefect worker, CI, ``nohup``) one log line every ``log_interval_s`` seconds on the
  task's Prefect run logger, so the Prefect UI shows it too: plain text, or one JSON object;
- nothing at all with ``quiet``.

A Prefect progress artifact follows every stage in all three modes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from bertflow.bert_core.stageio import Progress
from bertflow.tasks import console

_ONE_LIVE_DISPLAY = threading.Lock()  # rich draws one live display per process
UNITS = {"ingest": "files", "vocab": "docs", "mask": "work units", "pretrain": "steps", "finetune": "steps",
         "distill": "steps", "score": "rows"}  # for stages that report bare (done, total) counts


class ProgressOptions(BaseModel):
    """How stages show their progress (a flow parameter; the CLI's ``--quiet``, ``--log-format``, ``--log-interval``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    quiet: bool = Field(False, description="Show no progress: no live display, no progress log lines")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or as one JSON object per line (then never a live display)")
    log_interval_s: float = Field(
        30.0, gt=0, description="Seconds between progress log lines when stdout is not a terminal")


@dataclass(frozen=True)
class Snapshot:
    """A stage's progress with what a reader wants from it: percent, rate, ETA."""

    stage: str
    unit: str
    done: int
    total: int  # 0: unknown
    elapsed_s: float
    rate_per_s: float | None  # units per second since the first report
    eta_s: float | None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def percent(self) -> float | None:
        return min(100.0, 100.0 * self.done / self.total) if self.total > 0 else None

    def count(self) -> str:
        return f"{self.done}/{self.total} {self.unit}" if self.total > 0 else f"{self.done} {self.unit}"

    def rate(self) -> str:
        return f"{_number(self.rate_per_s)} {self.unit}/s" if self.rate_per_s else ""

    def eta(self) -> str:
        return f"ETA {_duration(self.eta_s)}" if self.eta_s is not None else ""

    def numbers(self) -> str:
        return " · ".join(_shown(k, v) for k, v in self.metrics.items())

    def text(self, final: bool = False) -> str:
        """One plain line, e.g. ``pretrain 120/300 steps (40%) | 8.1 steps/s | ETA 0:22 | loss 6.31 · ...``."""
        head = f"{self.stage} {self.count()}" + (f" ({self.percent:.0f}%)" if self.percent is not None else "")
        when = f"done in {_duration(self.elapsed_s)}" if final else self.eta()
        return " | ".join(p for p in (head, self.rate(), when, self.numbers()) if p)

    def record(self, final: bool = False) -> dict[str, Any]:
        """The JSON form: every field, rounded for reading."""
        data = asdict(self)
        data.update(event="progress", percent=self.percent, final=final, elapsed_s=round(self.elapsed_s, 3),
                    rate_per_s=_round(self.rate_per_s), eta_s=_round(self.eta_s),
                    metrics={k: _round(v) for k, v in self.metrics.items()})
        return data


class View(Protocol):
    def update(self, snap: Snapshot) -> None: ...
    def close(self, snap: Snapshot | None) -> None: ...


class StageProgress:
    """The ``on_progress`` a stage gets: counts or whole :class:`Progress` events in, snapshots to the views.

    Stages may report from worker threads (the vocabulary trainer does); numbers a
    stage reports once (the last validation score) stay shown until it reports them again.
    """

    def __init__(self, stage: str, views: list[View], clock=time.monotonic) -> None:
        self.stage = stage
        self.views = views
        self.clock = clock
        self.started = clock()
        self.metrics: dict[str, float] = {}
        self.last: Snapshot | None = None
        self._first: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        self.event(Progress(done, total, UNITS.get(self.stage, "")))

    def event(self, progress: Progress) -> None:
        with self._lock:
            self.metrics.update(progress.metrics)
            snap = self._snapshot(progress)
            self.last = snap
            for view in self.views:
                view.update(snap)

    def close(self) -> None:
        with self._lock:
            for view in self.views:
                view.close(self.last)

    def _snapshot(self, p: Progress) -> Snapshot:
        now = self.clock()
        if self._first is None or p.done < self._first[1]:
            self._first = (now, p.done)
        t0, done0 = self._first
        rate = (p.done - done0) / (now - t0) if now > t0 and p.done > done0 else None
        eta = (p.total - p.done) / rate if rate and p.total > 0 else None
        return Snapshot(self.stage, p.unit or UNITS.get(self.stage, ""), p.done, p.total, now - self.started, rate,
                        eta, dict(self.metrics))


class LogLines:
    """One log line every ``interval_s`` seconds (and a last one, if any was written), as text or JSON."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, interval_s: float, fmt: str,
                 clock=time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.fmt = fmt
        self.clock = clock
        self._next = clock() + interval_s
        self._written = 0

    def update(self, snap: Snapshot) -> None:
        now = self.clock()
        if now >= self._next:
            self._next = now + self.interval_s
            self._write(snap, final=False)

    def close(self, snap: Snapshot | None) -> None:
        if snap is not None and self._written:
            self._write(snap, final=True)

    def _write(self, snap: Snapshot, final: bool) -> None:
        self._written += 1
        record = snap.record(final)
        message = json.dumps(record) if self.fmt == "json" else snap.text(final)
        self.logger.info(message, extra={"progress": record})


class LiveLine:
    """A rich live line for the stage in the terminal; log lines print above it while it runs."""

    def __init__(self, stage: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RichProgress, SpinnerColumn, TextColumn

        real_out, real_err = sys.stdout, sys.stderr
        self.display = RichProgress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[numbers]}"),
            console=Console(file=real_out), redirect_stdout=True, redirect_stderr=True, refresh_per_second=4,
        )
        self.task = self.display.add_task(stage, total=None, count="", rate="", eta="", numbers="")
        self.display.start()
        self._routing = console.routed_through(sys.stdout, sys.stderr, real_out, real_err)
        self._routing.__enter__()

    def update(self, snap: Snapshot) -> None:
        self.display.update(self.task, completed=snap.done, total=snap.total or None, count=snap.count(),
                            rate=snap.rate(), eta=snap.eta(), numbers=snap.numbers())

    def close(self, snap: Snapshot | None) -> None:
        try:
            if snap is not None:
                self.display.update(self.task, completed=snap.done, total=snap.total or snap.done or None,
                                    count=snap.count(), rate=snap.rate(), eta=f"in {_duration(snap.elapsed_s)}",
                                    numbers=snap.numbers())
            self.display.stop()
        finally:
            self._routing.__exit__(None, None, None)


class PrefectArtifact:
    """The stage's Prefect progress artifact, updated at most every ``every_s`` seconds.

    Only from the task's own thread: Prefect creates artifacts from its run context, and a
    stage's worker threads have none (the last update comes from the task thread at the end).
    """

    def __init__(self, stage: str, every_s: float = 2.0) -> None:
        self.stage = stage
        self.every_s = every_s
        self.thread = threading.get_ident()
        self._last = 0.0
        self._artifact_id = None

    def update(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if threading.get_ident() != self.thread or now - self._last < self.every_s:
            return
        self._last = now
        self._publish(snap)

    def close(self, snap: Snapshot | None) -> None:
        if snap is not None and threading.get_ident() == self.thread:
            self._publish(snap)

    def _publish(self, snap: Snapshot) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        text = f"{self.stage}: {snap.count()}"
        try:
            if self._artifact_id is None:
                self._artifact_id = create_progress_artifact(snap.percent or 0.0, key=f"{self.stage}-progress",
                                                             description=text)
            else:
                update_progress_artifact(self._artifact_id, snap.percent or 0.0, description=text)
        except Exception:  # progress must never break a stage
            pass


@contextlib.contextmanager
def stage_progress(stage: str, options: ProgressOptions, logger: logging.Logger | logging.LoggerAdapter,
                   terminal: bool | None = None) -> Iterator[StageProgress]:
    """The ``on_progress`` for one stage run, showing it as ``options`` say; closed (a last line) at the end.

    ``terminal``: whether stdout is a terminal (default: ask it). JSON lines are for machines,
    so ``log_format="json"`` always writes log lines.
    """
    views: list[View] = [PrefectArtifact(stage)]
    live = False
    if not options.quiet:
        live = (sys.stdout.isatty() if terminal is None else terminal) and options.log_format == "text" \
            and _ONE_LIVE_DISPLAY.acquire(blocking=False)  # stages running side by side: the others log lines
        view: View | None = None
        if live:
            try:
                view = LiveLine(stage)
            except Exception:  # a display must never break a stage: log lines instead
                _ONE_LIVE_DISPLAY.release()
                live = False
        views.append(view or LogLines(logger, options.log_interval_s, options.log_format))
    sink = StageProgress(stage, views)
    try:
        yield sink
    finally:
        try:
            sink.close()
        finally:
            if live:
                _ONE_LIVE_DISPLAY.release()


def _number(v: float | None) -> str:
    if v is None:
        return "?"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:#.3g}".rstrip(".") if a < 1000 else f"{v:.0f}"  # 3 digits, kept: 7.00, 0.0459, 907


def _shown(key: str, value: float) -> str:
    """``loss 6.31``, but rates after their value: ``13.2k tokens/s``, ``4.84 MB/s``."""
    if key.endswith("_per_s"):
        unit = key[: -len("_per_s")]
        return f"{_number(value)} {'MB' if unit == 'mb' else unit}/s"
    return f"{key} {_number(value)}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.6g}")
