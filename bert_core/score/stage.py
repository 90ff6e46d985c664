"""Bulk scoring of a Parquet lake, exactly once, on one code path whatever the runner or the storage.

``run`` takes the output lock, claims the output for this input, removes stale temporary
files, plans (``plan``), checks the model once, hands the pending files to a
:data:`FileScorer` (the runner: which process, machine or GPU scores each file; by
default one after another in this process), collects one :class:`FileResult` per file
and writes the run manifest. Input and output may each be local or on an object store.

Exactly once: each output file is written under a hidden temporary name and published
whole (``commit``: a rename locally, a server-side copy on an object store); its footer
carries the commit record (input fingerprint, model fingerprint, config digest, counts).
A rerun skips files whose record matches, redoes the rest and removes stale temporary
files, so a crash never leaves partial or duplicate files.

``score.where`` is pushed down: partitions whose path rules out every row are pruned
before any file is opened (``lake.prune``), row groups whose statistics rule it out are
not read (``one_file``), and the manifest counts the files pruned, the row groups skipped
and the bytes read.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import MANIFEST, ProgressFn, model_dir_digest, report
from bertflow.bert_core.storage import Location, ReadCounter, locate

from bertflow.bert_core.score.commit import (clean_stale_temps, commit_status, output_lock, read_commit,
                                            remove_temp_prefix)
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.destination import claim, input_identity
from bertflow.bert_core.score.fingerprint import config_digest, footer_and_fingerprint
from bertflow.bert_core.score.lake import discover, output_path, partition_types, prune, typed_partition
from bertflow.bert_core.score.one_file import FileWork, score_file
from bertflow.bert_core.score.heads import head_name
from bertflow.bert_core.score.results import FileJob, FileResult, ScoreResult
from bertflow.bert_core.score.where import parse_where

__all__ = ["FileJob", "FileResult", "ScoreResult", "FileWork", "FileScorer", "plan", "score_file", "score_in_process",
           "run", "output_lock", "clean_stale_temps", "output_dataset", "Plan"]

STAGE = "score"


@dataclass
class Plan:
    """A run's plan: one job per file that may hold matching rows, the files pruned by path, bytes read to plan."""

    jobs: list[FileJob]
    pruned: list[str] = field(default_factory=list)  # relative paths of the files no row of which can match
    bytes_read: int = 0  # footers read to fingerprint and check the files


def plan(cfg: ScoreConfig, out_dir: str | Path | Location, model_dir: str | Path | None = None) -> list[FileJob]:
    """Discover the input files, map each to its output and mark those already committed.

    Pass ``model_dir`` to also redo files scored by a different model (``run`` does).
    Files whose partition path rules out every row of ``score.where`` get no job (see
    :func:`plan_run` for them). Raises InputError for a bad condition, a missing input, or
    a column problem shared by every readable file; a problem in only some files is
    recorded in ``FileJob.problem``.
    """
    return plan_run(cfg, out_dir, model_dir).jobs


def plan_run(cfg: ScoreConfig, out_dir: str | Path | Location, model_dir: str | Path | None = None) -> Plan:
    """:func:`plan` with the pruned files and the bytes read to plan."""
    from bertflow.bert_core.score.scorer import read_plan

    out = out_dir if isinstance(out_dir, Location) else locate(out_dir)
    where = parse_where(cfg.where)
    root, files = discover(cfg.input, exclude=out)
    types = partition_types(files)
    kept, pruned = prune(root, files, where, types)
    digest = config_digest(cfg)
    model_fp = model_dir_digest(model_dir) if model_dir is not None else None
    counter = ReadCounter()
    listed = {info.path for info in out.files()}  # one listing, not a request per output file
    head = head_name(cfg, model_dir)
    jobs, seen, schema_errors, readable = [], {}, [], 0
    for f in kept:
        source = Location(f.uri, root.fs, f.path)
        footer, fp = footer_and_fingerprint(source, cfg.input_fingerprint, counter)
        rows, problem = -1, None
        try:
            if not footer:
                raise OSError("no Parquet footer (not Parquet, or cut short)")
            meta = pq.read_metadata(pa.BufferReader(footer))
            rows = meta.num_rows
            schema = meta.schema.to_arrow_schema()
            readable += 1
            try:
                read_plan(cfg, schema, typed_partition(f.partition, types), where, f.uri, head)
            except InputError as exc:
                problem = str(exc)
                schema_errors.append(exc)
        except (pa.ArrowException, OSError) as exc:
            problem = f"not a readable Parquet file: {exc}"
        target = output_path(out, f.rel)
        if target.path in seen:
            raise InputError(f"inputs {seen[target.path]} and {f.rel} map to the same output {target.uri}; rename one")
        seen[target.path] = f.rel
        committed, reason = commit_status(target, fp, digest, model_fp, listed)
        jobs.append(FileJob(f.uri, f.rel.as_posix(), target.uri, f.partition, fp, rows,
                            committed and problem is None, reason if problem is None else "cannot score", problem,
                            partition_types=tuple((k, types[k]) for k, _ in f.partition)))
    if readable and len(schema_errors) == readable:
        raise schema_errors[0]  # the config does not fit the data at all: a user mistake, not a bad file
    return Plan(jobs, [f.rel.as_posix() for f in pruned], counter.bytes)


RowsFn = Callable[[FileJob, int], None]
"""``on_rows(job, rows_done)``: progress within a file, for scorers that can report it."""
FileScorer = Callable[[Sequence[FileJob], FileWork, RowsFn], Iterable[FileResult]]
"""Where the pending files are scored: calls ``work(job)`` for each job somewhere and yields the
results as they finish (any order). A worker's exception (a full disk, a bug) stops the run."""


def score_in_process(jobs: Sequence[FileJob], work: FileWork, on_rows: RowsFn) -> Iterator[FileResult]:
    """The default :data:`FileScorer`: one file after another in this process."""
    for job in jobs:
        yield work(job, lambda done, _total, job=job: on_rows(job, done))


def run(cfg: ScoreConfig, model_dir: str | Path, out_dir: str | Path | Location, *, model_uri: str | None = None,
        model_version: str | None = None, on_progress: ProgressFn | None = None,
        score_files: FileScorer | None = None, cache_dir: str | Path | None = None) -> ScoreResult:
    """Score every pending file of ``cfg.input`` into ``out_dir`` (a folder or ``s3://`` prefix) under its lock.

    An output that holds another input's results is refused unless ``cfg.overwrite``.
    ``score_files`` decides where each file is scored (default: :func:`score_in_process`).
    The model is checked once, before any file: a damaged model is one clear error, not
    every file failed. A file that cannot be scored (corrupt, column missing) is reported
    in the result and manifest (``failed``, with its reason) and the others are scored;
    the next run tries it again.

    ``score.backend`` onnx / onnx-int8: the model is exported (and quantized) into
    ``cache_dir`` (a local folder; None: a temporary one for this run); they and torch-bf16 must pass the
    parity gate (:mod:`bert_core.score.parity`) before any file is scored; its figures go
    into the manifest and the metrics.
    """
    if cfg.backend != "torch" and cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="bertflow-onnx-") as tmp:
            return run(cfg, model_dir, out_dir, model_uri=model_uri, model_version=model_version,
                       on_progress=on_progress, score_files=score_files, cache_dir=tmp)
    t0 = time.perf_counter()
    out = out_dir if isinstance(out_dir, Location) else locate(out_dir)
    with output_lock(out) as lock:
        claimed = claim(out, cfg)
        stale = clean_stale_temps(out)
        planned = plan_run(cfg, out, model_dir=model_dir)
        jobs = planned.jobs
        pending = [j for j in jobs if not j.committed]
        parity = _check_model(cfg, model_dir, jobs, pending, local=score_files is None, cache_dir=cache_dir)
        progress = _Progress(on_progress, pending)
        done: dict[str, FileResult] = {}
        work = FileWork(cfg, str(model_dir), model_uri, model_version, str(cache_dir) if cache_dir else None)
        for result in (score_files or score_in_process)(pending, work, progress.rows):
            done[result.input] = result
            progress.finished(result)
            lock.check()  # an object-store lease taken over: stop rather than race its new holder
        progress.close()
        missing = [j.input_path for j in pending if j.rel_path not in done]
        if missing:
            raise RuntimeError(f"the file scorer returned no result for {missing[0]} ({len(missing)} files)")
        if out.remote:
            remove_temp_prefix(out)  # this run's temporaries, all published or discarded by now
        results = [done.get(j.rel_path) or FileResult.skipped(j, read_commit(j.output_path)) for j in jobs]
        return _write_run_manifest(cfg, out, planned, results, seconds=time.perf_counter() - t0, model_dir=model_dir,
                                   model_uri=model_uri, model_version=model_version, stale_removed=stale,
                                   overwritten=claimed["removed"], parity=parity)


def _check_model(cfg: ScoreConfig, model_dir: str | Path, jobs: list[FileJob], pending: list[FileJob], *,
                 local: bool, cache_dir: str | Path | None):
    """Before any file: gate an ONNX backend, and load the model (or check it once for the workers).

    The gate's input slice is the first rows of every planned file, committed or not, so a rerun
    after a crash compares on the same rows and finds its cached figures. Returns the gate's
    :class:`~bert_core.score.parity.Parity` (None for torch, or with nothing to score).
    """
    from bertflow.bert_core.score.model import check_model, load_classifier

    if not any(j.problem is None for j in pending):
        return None
    if cfg.backend == "torch":
        if local:
            load_classifier(model_dir, cfg)  # loaded once here, reused for every file
        else:
            check_model(model_dir, cfg)  # the workers load their own copy, maybe on a device we lack
        return None
    from bertflow.bert_core.score.parity import gate

    parity = gate(cfg, model_dir, cache_dir, jobs)
    load_classifier(model_dir, cfg, cache_dir)  # the ONNX file is in the cache before any worker looks for it
    return parity


class _Progress:
    """Rows done over the pending files, whether a scorer reports rows within a file or only finished files."""

    def __init__(self, on_progress: ProgressFn | None, pending: list[FileJob]) -> None:
        self.on_progress = on_progress
        self.rows_of = {j.rel_path: max(j.rows, 0) for j in pending}
        self.total = sum(self.rows_of.values())
        self.by_file: dict[str, int] = {}
        self.done = 0
        self.files = {"files_done": 0, "files_failed": 0, "files_pending": len(pending)}

    def rows(self, job: FileJob, done: int) -> None:
        self._set(job.rel_path, done)

    def finished(self, result: FileResult) -> None:
        self.files["files_failed" if result.status == "failed" else "files_done"] += 1
        self.files["files_pending"] -= 1
        self._set(result.input, self.rows_of.get(result.input, 0))

    def close(self) -> None:
        report(self.on_progress, self.total, self.total, "rows", **self.files)

    def _set(self, key: str, done: int) -> None:
        before = self.by_file.get(key, 0)
        if done > before:
            self.by_file[key] = done
            self.done += done - before
        report(self.on_progress, min(self.done, self.total), self.total, "rows", **self.files)


def _write_run_manifest(cfg: ScoreConfig, out: Location, planned: Plan, results: list[FileResult],
                        *, seconds: float, model_dir: str | Path, model_uri: str | None,
                        model_version: str | None, stale_removed: list[str], overwritten: list[str],
                        parity=None) -> ScoreResult:
    """Write ``manifest.json`` (and a copy under ``_runs/``) for one run and return its ScoreResult."""
    from bertflow.bert_core import __version__

    jobs = planned.jobs
    scored = [r for r in results if r.status == "scored"]
    failed = [r for r in results if r.status == "failed"]

    def total(key: str) -> int:
        return sum(getattr(r, key) for r in scored)

    metrics = {
        "files": float(len(jobs)), "files_scored": float(len(scored)),
        "files_skipped": float(sum(r.status == "skipped" for r in results)), "files_failed": float(len(failed)),
        "files_pruned": float(len(planned.pruned)),
        **{k: float(total(k)) for k in ("rows_in", "rows_filtered", "rows_scored", "rows_error", "rows_truncated",
                                        "row_groups_read", "row_groups_skipped")},
        "bytes_read": float(planned.bytes_read + total("bytes_read")),
        "rows_per_s": total("rows_out") / seconds if seconds > 0 else 0.0, "seconds": seconds,
        **(parity.metrics() if parity is not None else {}),
    }
    padded = total("padded_tokens")
    fingerprint = hashlib.sha256("".join(f"{j.rel_path}\0{j.input_fingerprint}\n" for j in
                                         sorted(jobs, key=lambda j: j.rel_path)).encode()).hexdigest()
    known = {j.output_path for j in jobs}
    orphans = sorted(out.rel_of(p) for p in _visible_parquet(out) if out.uri_of(p) not in known)
    manifest = {
        "bertflow_version": __version__, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage": STAGE, "run_id": uuid.uuid4().hex[:12], "config": to_dict(cfg), "input": input_identity(cfg.input),
        "output": out.uri, "input_fingerprint": fingerprint, "model_dir": str(Path(model_dir).resolve()),
        "model_uri": model_uri, "model_version": model_version,
        "model_fingerprint": model_dir_digest(model_dir), "config_digest": config_digest(cfg),
        "device": next((r.device for r in scored), None), "dtype": next((r.dtype for r in scored), None),
        "backend": cfg.backend, "parity": parity.to_dict() if parity is not None else None,
        "metrics": metrics, "padding_efficiency": total("tokens") / padded if padded else None,
        "where": cfg.where, "pruned": planned.pruned, "plan_bytes_read": planned.bytes_read,
        "files": [r.to_dict() for r in results], "failed": [{"input": r.input, "reason": r.reason} for r in failed],
        "stale_temps_removed": stale_removed, "orphan_outputs": orphans, "overwritten": overwritten,
        "jobs": [asdict(j) for j in jobs],
    }
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    path = out.child(MANIFEST)
    path.write_bytes(body)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not out.remote:
        Path(out.path, "_runs").mkdir(exist_ok=True)
    out.child(f"_runs/{stamp}-{manifest['run_id']}.json").write_bytes(body)
    details = {"manifest": path.uri, "files": results, "failed": failed, "stale_temps_removed": stale_removed,
               "parity": manifest["parity"],
               "orphan_outputs": orphans, "pruned": planned.pruned, "overwritten": overwritten}
    return ScoreResult(stage=STAGE, path=out.uri, metrics=metrics, details=details)


def read_run_manifest(out_dir: str | Path | Location) -> dict:
    """The manifest of the last run that wrote ``out_dir`` (local or on an object store)."""
    out = out_dir if isinstance(out_dir, Location) else locate(out_dir)
    try:
        return json.loads(out.child(MANIFEST).read_bytes())
    except FileNotFoundError:
        raise InputError(f"{out.uri} is not a score output: {MANIFEST} is missing "
                         f"(run the score stage first)") from None


def output_dataset(out_dir: str | Path | Location):
    """The scored output as a ``pyarrow.dataset`` (hive partitions as columns; manifest and hidden files skipped).

    Works for a local folder and an object-store prefix alike. ``pq.read_table(out_dir)``
    fails on the stage's ``manifest.json``; read with this, or glob ``**/*.parquet``
    (DuckDB: ``read_parquet('out/**/*.parquet', hive_partitioning=true)``).
    """
    import pyarrow.dataset as ds

    root = out_dir if isinstance(out_dir, Location) else locate(out_dir)
    return ds.dataset(_visible_parquet(root), format="parquet", partitioning="hive", partition_base_dir=root.path,
                      filesystem=root.fs)


def _visible_parquet(root: Location) -> list[str]:
    """Output files as readers see them: ``*.parquet``, no hidden or ``_``-prefixed path parts."""
    return [i.path for i in root.files() if i.path.endswith(".parquet")
            and not any(s.startswith((".", "_")) for s in root.rel_of(i.path).split("/"))]
