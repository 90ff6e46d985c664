"""What a scoring run plans and reports: one ``FileJob`` in and one ``FileResult`` out per input file.

Both are frozen dataclasses of plain strings and numbers: Prefect and Ray pickle them to
and from the workers. ``FileResult`` is built here only (``scored``/``skipped``/``failed``),
so every runner reports the same fields, in the manifest as in the stage result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bertflow.bert_core.stageio import StageResult

COUNTS = ("rows_in", "rows_filtered", "rows_out", "rows_scored", "rows_error", "rows_truncated")


@dataclass(frozen=True)
class FileJob:
    """One input file and its output."""

    input_path: str  # absolute path (or s3://... URI) of the input Parquet file
    rel_path: str  # its path relative to the input root (posix), mirrored in the output
    output_path: str  # absolute path (or URI) of its output file
    partition: tuple[tuple[str, str], ...]  # hive partition (key, value) pairs, decoded
    input_fingerprint: str  # see fingerprint.input_fingerprint
    rows: int  # rows in the input (its footer); -1 when it cannot be read
    committed: bool  # its output exists and matches input, config and (when planned with one) model
    reason: str  # why (not) committed: new, committed, input changed, config changed, model changed, ...
    problem: str | None = None  # why the file cannot be scored (unreadable, column missing); None when fine
    partition_types: tuple[tuple[str, str], ...] = ()  # each partition key's type over the lake: int64, date32, string


@dataclass(frozen=True)
class FileResult:
    """What became of one input file in one run. Counts are this run's (a skipped file: its commit record's)."""

    input: str  # FileJob.rel_path
    output: str  # FileJob.output_path
    status: Literal["scored", "skipped", "failed"]
    rows_in: int = 0
    rows_filtered: int = 0  # ruled out by score.where (skipped row groups included)
    rows_out: int = 0
    rows_scored: int = 0
    rows_error: int = 0  # rows written with an error code instead of a prediction
    rows_truncated: int = 0
    seconds: float = 0.0
    device: str | None = None  # where it was scored (None: not scored in this run)
    dtype: str | None = None
    tokens: int = 0
    padded_tokens: int = 0
    row_groups_read: int = 0
    row_groups_skipped: int = 0  # ruled out by score.where from their statistics, never read
    bytes_read: int = 0  # from the input file, footer included
    errors_by_code: dict[str, int] = field(default_factory=dict, hash=False)
    reason: str | None = None  # why it failed, naming the file

    @classmethod
    def scored(cls, job: FileJob, counts: Any, seconds: float, device: str, dtype: str) -> FileResult:
        """From the scorer's ``Counts`` of a file just committed."""
        return cls(job.rel_path, job.output_path, "scored", **{k: int(getattr(counts, k)) for k in COUNTS},
                   seconds=round(seconds, 4), device=device, dtype=dtype, tokens=int(counts.tokens),
                   padded_tokens=int(counts.padded_tokens), errors_by_code=dict(counts.errors_by_code),
                   row_groups_read=int(counts.row_groups_read), row_groups_skipped=int(counts.row_groups_skipped),
                   bytes_read=int(counts.bytes_read))

    @classmethod
    def skipped(cls, job: FileJob, record: dict[str, Any] | None) -> FileResult:
        """A file already committed; its counts come from the output's commit record."""
        record = record or {}
        return cls(job.rel_path, job.output_path, "skipped", **{k: int(record.get(k, 0)) for k in COUNTS})

    @classmethod
    def failed(cls, job: FileJob, reason: str) -> FileResult:
        """A file that could not be scored (corrupt, column missing); the next run tries it again."""
        return cls(job.rel_path, job.output_path, "failed", reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreResult(StageResult):
    """A scoring run's StageResult; ``details["files"]`` holds one FileResult per input file, in plan order."""

    @property
    def files(self) -> list[FileResult]:
        return list(self.details.get("files", []))

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]
