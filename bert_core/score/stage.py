"""Bulk scoring of a Parquet lake, exactly once, on one code path whatever the runner.

``run`` takes the output lock, removes stale temporary files, plans (``plan``), checks
the model once, hands the pending files to a :data:`FileScorer` (the runner: which
process, machine or GPU scores each file; by default one after another in this
process), collects one :class:`FileResult` per file and writes the run manifest.

Exactly once: each output file is written under a hidden temporary name and renamed
into place; its footer carries the commit record (input fingerprint, model
fingerprint, config digest, counts). A rerun skips files whose record matches,
redoes the rest (atomically replacing any out-of-date output) and removes stale
temporary files, so a crash never leaves partial or duplicate files.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import ProgressFn, atomic_write_bytes, model_dir_digest, write_manifest

from bertflow.bert_core.score.commit import clean_stale_temps, commit_status, output_lock, read_commit
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.filters import parse_filter
from bertflow.bert_core.score.fingerprint import config_digest, input_fingerprint
from bertflow.bert_core.score.lake import discover, output_path
from bertflow.bert_core.score.one_file import FileWork, score_file
from bertflow.bert_core.score.heads import head_name
from bertflow.bert_core.score.results import FileJob, FileResult, ScoreResult

__all__ = ["FileJob", "FileResult", "ScoreResult", "FileWork", "FileScorer", "plan", "score_file", "score_in_process",
           "run", "output_lock", "clean_stale_temps", "output_dataset"]

STAGE = "score"


def plan(cfg: ScoreConfig, out_dir: str | Path, model_dir: str | Path | None = None) -> list[FileJob]:
    """Discover the input files, map each to its output and mark those already committed.

    Pass ``model_dir`` to also redo files scored by a different model (``run`` does).
    Raises InputError for a bad filter, a missing input, or a column problem shared by
    every readable file; a problem in only some files is recorded in ``FileJob.problem``.
    """
    from bertflow.bert_core.score.scorer import read_plan

    out = Path(out_dir).resolve()
    flt = parse_filter(cfg.filter)
    root, files = discover(cfg.input, exclude=out)
    digest = config_digest(cfg)
    model_fp = model_dir_digest(model_dir) if model_dir is not None else None
    head = head_name(cfg, model_dir)
    jobs, seen, schema_errors, readable = [], {}, [], 0
    for f in files:
        where = str(f.path)
        fp = input_fingerprint(f.path, cfg.input_fingerprint)
        rows, problem = -1, None
        try:
            meta = pq.read_metadata(f.path)
            rows = meta.num_rows
            schema = meta.schema.to_arrow_schema()
            readable += 1
            try:
                read_plan(cfg, schema, dict(f.partition), flt, where, head)
            except InputError as exc:
                problem = str(exc)
                schema_errors.append(exc)
        except (pa.ArrowException, OSError) as exc:
            problem = f"not a readable Parquet file: {exc}"
        target = output_path(out, f.rel)
        if target in seen:
            raise InputError(f"inputs {seen[target]} and {f.rel} map to the same output {target}; rename one")
        seen[target] = f.rel
        committed, reason = commit_status(target, fp, digest, model_fp)
        jobs.append(FileJob(str(f.path), f.rel.as_posix(), str(target), f.partition, fp, rows,
                            committed and problem is None, reason if problem is None else "cannot score", problem))
    if readable and len(schema_errors) == readable:
        raise schema_errors[0]  # the config does not fit the data at all: a user mistake, not a bad file
    return jobs


RowsFn = Callable[[FileJob, int], None]
"""``on_rows(job, rows_done)``: progress within a file, for scorers that can report it."""
FileScorer = Callable[[Sequence[FileJob], FileWork, RowsFn], Iterable[FileResult]]
"""Where the pending files are scored: calls ``work(job)`` for each job somewhere and yields the
results as they finish (any order). A worker's exception (a full disk, a bug) stops the run."""


def score_in_process(jobs: Sequence[FileJob], work: FileWork, on_rows: RowsFn) -> Iterator[FileResult]:
    """The default :data:`FileScorer`: one file after another in this process."""
    for job in jobs:
        yield work(job, lambda done, _total, job=job: on_rows(job, done))


def run(cfg: ScoreConfig, model_dir: str | Path, out_dir: str | Path, *, model_uri: str | None = None,
        model_version: str | None = None, on_progress: ProgressFn | None = None,
        score_files: FileScorer | None = None) -> ScoreResult:
    """Score every pending file of ``cfg.input`` into ``out_dir`` under the output lock.

    ``score_files`` decides where each file is scored (default: :func:`score_in_process`).
    The model is checked once, before any file: a damaged model is one clear error, not
    every file failed. A file that cannot be scored (corrupt, column missing) is reported
    in the result and manifest (``failed``, with its reason) and the others are scored;
    the next run tries it again.
    """
    from bertflow.bert_core.score.model import check_model, load_classifier

    t0 = time.perf_counter()
    out = Path(out_dir)
    with output_lock(out):
        stale = clean_stale_temps(out)
        jobs = plan(cfg, out, model_dir=model_dir)
        pending = [j for j in jobs if not j.committed]
        if any(j.problem is None for j in pending):
            if score_files is None:
                load_classifier(model_dir, cfg)  # loaded once here, reused for every file
            else:
                check_model(model_dir, cfg)  # the workers load their own copy, maybe on a device we lack
        progress = _Progress(on_progress, pending)
        done: dict[str, FileResult] = {}
        for result in (score_files or score_in_process)(pending, FileWork(cfg, str(model_dir), model_uri,
                                                                          model_version), progress.rows):
            done[result.input] = result
            progress.finished(result)
        progress.close()
        missing = [j.input_path for j in pending if j.rel_path not in done]
        if missing:
            raise RuntimeError(f"the file scorer returned no result for {missing[0]} ({len(missing)} files)")
        results = [done.get(j.rel_path) or FileResult.skipped(j, read_commit(j.output_path)) for j in jobs]
        return _write_run_manifest(cfg, out, jobs, results, seconds=time.perf_counter() - t0, model_dir=model_dir,
                                   model_uri=model_uri, model_version=model_version, stale_removed=stale)


class _Progress:
    """Rows done over the pending files, whether a scorer reports rows within a file or only finished files."""

    def __init__(self, on_progress: ProgressFn | None, pending: list[FileJob]) -> None:
        self.on_progress = on_progress
        self.rows_of = {j.rel_path: max(j.rows, 0) for j in pending}
        self.total = sum(self.rows_of.values())
        self.by_file: dict[str, int] = {}
        self.done = 0

    def rows(self, job: FileJob, done: int) -> None:
        self._set(job.rel_path, done)

    def finished(self, result: FileResult) -> None:
        self._set(result.input, self.rows_of.get(result.input, 0))

    def close(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.total, self.total)

    def _set(self, key: str, done: int) -> None:
        before = self.by_file.get(key, 0)
        if done > before:
            self.by_file[key] = done
            self.done += done - before
        if self.on_progress is not None:
            self.on_progress(min(self.done, self.total), self.total)


def _write_run_manifest(cfg: ScoreConfig, out: Path, jobs: list[FileJob], results: list[FileResult],
                        *, seconds: float, model_dir: str | Path, model_uri: str | None,
                        model_version: str | None, stale_removed: list[str]) -> ScoreResult:
    """Write ``manifest.json`` (and a copy under ``_runs/``) for one run and return its ScoreResult."""
    scored = [r for r in results if r.status == "scored"]
    failed = [r for r in results if r.status == "failed"]

    def total(key: str) -> int:
        return sum(getattr(r, key) for r in scored)

    metrics = {
        "files": float(len(jobs)), "files_scored": float(len(scored)),
        "files_skipped": float(sum(r.status == "skipped" for r in results)), "files_failed": float(len(failed)),
        **{k: float(total(k)) for k in ("rows_in", "rows_filtered", "rows_scored", "rows_error", "rows_truncated")},
        "rows_per_s": total("rows_out") / seconds if seconds > 0 else 0.0, "seconds": seconds,
    }
    padded = total("padded_tokens")
    fingerprint = hashlib.sha256("".join(f"{j.rel_path}\0{j.input_fingerprint}\n" for j in
                                         sorted(jobs, key=lambda j: j.rel_path)).encode()).hexdigest()
    known = {Path(j.output_path) for j in jobs}
    orphans = sorted(p.relative_to(out).as_posix() for p in _visible_parquet(out) if p.resolve() not in known)
    manifest = {
        "stage": STAGE, "run_id": uuid.uuid4().hex[:12], "config": to_dict(cfg), "input": cfg.input,
        "input_fingerprint": fingerprint, "model_dir": str(Path(model_dir).resolve()),
        "model_uri": model_uri, "model_version": model_version,
        "model_fingerprint": model_dir_digest(model_dir), "config_digest": config_digest(cfg),
        "device": next((r.device for r in scored), None), "dtype": next((r.dtype for r in scored), None),
        "metrics": metrics, "padding_efficiency": total("tokens") / padded if padded else None,
        "files": [r.to_dict() for r in results], "failed": [{"input": r.input, "reason": r.reason} for r in failed],
        "stale_temps_removed": stale_removed, "orphan_outputs": orphans,
        "jobs": [asdict(j) for j in jobs],
    }
    path = write_manifest(out, manifest)
    runs = out / "_runs"
    runs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    atomic_write_bytes(runs / f"{stamp}-{manifest['run_id']}.json", path.read_bytes())
    details = {"manifest": str(path), "files": results, "failed": failed, "stale_temps_removed": stale_removed,
               "orphan_outputs": orphans}
    return ScoreResult(stage=STAGE, path=str(out), metrics=metrics, details=details)


def output_dataset(out_dir: str | Path):
    """The scored output as a ``pyarrow.dataset`` (hive partitions as columns; manifest and hidden files skipped).

    ``pq.read_table(out_dir)`` fails on the stage's ``manifest.json``; read with this,
    or glob ``**/*.parquet`` (DuckDB: ``read_parquet('out/**/*.parquet', hive_partitioning=true)``).
    """
    import pyarrow.dataset as ds

    root = Path(out_dir)
    files = sorted(str(p) for p in _visible_parquet(root))
    return ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(root))


def _visible_parquet(root: Path) -> list[Path]:
    """Output files as readers see them: ``*.parquet``, no hidden or ``_``-prefixed path parts."""
    return [p for p in root.rglob("*.parquet") if not any(s.startswith((".", "_")) for s in p.relative_to(root).parts)]
