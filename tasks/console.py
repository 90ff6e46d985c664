"""What a run prints besides our own progress: third-party chatter off, log lines as text or JSON.

A user watching ``bertflow pipeline`` can act on our log lines and on real warnings,
not on a library's download bars or its "started monitoring" notes: :func:`quiet_third_parties`
turns those off. :func:`log_format` makes every console log line one JSON object
(``--log-format json``), and :func:`routed_through` keeps log lines above a live progress
display instead of tearing it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

# Loggers whose INFO lines narrate a library's internals (never a thing to act on); their warnings still show.
CHATTY_LOGGERS = ("mlflow.system_metrics", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.pyfunc",
                  "mlflow.models.model", "alembic",
                  "httpx")


def quiet_third_parties() -> None:
    """No progress bars from Hugging Face or MLflow downloads, no INFO chatter from MLflow's internals.

    Environment defaults reach libraries imported later (and Ray workers); a library
    already imported is told directly. A user's own environment settings win.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read on every download
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False"):
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars of from_pretrained
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and a progress record's fields)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
        }
        for key in ("flow_run_name", "task_run_name"):
            if getattr(record, key, None):
                data[key] = getattr(record, key)
        progress = getattr(record, "progress", None)
        if isinstance(progress, dict):
            data.update(progress)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def console_handlers(*also: IO[str]) -> list[logging.StreamHandler]:
    """Every handler, on any logger, that writes to this process's stdout or stderr (or to a stream in ``also``)."""
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, *also) if s is not None}
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    found: dict[int, logging.StreamHandler] = {}
    for logger in loggers:
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and id(getattr(h, "stream", None)) in streams:
                found[id(h)] = h
    return list(found.values())


def use_json_lines() -> list[tuple[logging.Handler, logging.Formatter | None]]:
    """Make every console log line a JSON object from now on; returns the formatters replaced."""
    saved = [(h, h.formatter) for h in console_handlers() if not isinstance(h.formatter, JsonLines)]
    for h, _ in saved:
        h.setFormatter(JsonLines())
    return saved


@contextlib.contextmanager
def log_format(fmt: str) -> Iterator[None]:
    """Within the block, console log lines are JSON objects (``fmt="json"``) or left as they are (``"text"``)."""
    saved = use_json_lines() if fmt == "json" else []
    try:
        yield
    finally:
        for h, formatter in saved:
            h.setFormatter(formatter)


@contextlib.contextmanager
def routed_through(out: IO[str], err: IO[str], real_out: IO[str], real_err: IO[str]) -> Iterator[None]:
    """Point console log handlers that write to ``real_out``/``real_err`` at ``out``/``err`` within the block.

    A live display redraws its lines in place; a log line written straight to the terminal
    under it would tear it. rich's proxies (``out``/``err``) print such lines above the display.
    Prefect's console handler keeps its own rich ``Console``, whose file is pointed there too.
    """
    swaps: list[tuple[Any, str, Any]] = []
    for h in console_handlers(real_out, real_err):
        target = out if h.stream is real_out else err if h.stream is real_err else None
        if target is None:
            continue
        swaps.append((h, "stream", h.stream))
        h.stream = target
        console = getattr(h, "console", None)
        if console is not None and hasattr(console, "file"):
            swaps.append((console, "file", console.file))
            console.file = target
    try:
        yield
    finally:
        for obj, attr, value in reversed(swaps):
            setattr(obj, attr, value)
