"""Bulk scoring of a Parquet lake, exactly once: ``plan`` → ``score_file`` per file → manifest.

``run`` does it all in one process. An orchestrator can do the same in parallel:
take :func:`output_lock`, call :func:`clean_stale_temps` and :func:`plan`, map
:func:`score_file` over the jobs that are not committed (each call is idempotent:
it returns at once for a file already committed), then :func:`write_run_manifest`.

Exactly once: each output file is written under a hidden temporary name and renamed
into place; its footer carries the commit record (input fingerprint, model
fingerprint, config digest, counts). A rerun skips files whose record matches,
redoes the rest (atomically replacing any out-of-date output) and removes stale
temporary files, so a crash never leaves partial or duplicate files.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import BertflowError, InputError
from bertflow.bert_core.stageio import (ProgressFn, StageResult, atomic_write_bytes, model_dir_digest, raise_if_disk_full,
                                        write_manifest)

from bertflow.bert_core.score.commit import (COMMIT_KEY, clean_stale_temps, commit_status, output_lock, publish,
                                    read_commit, temp_path)
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.filters import parse_filter
from bertflow.bert_core.score.fingerprint import config_digest, input_fingerprint
from bertflow.bert_core.score.lake import discover, output_path

__all__ = ["FileJob", "plan", "score_file", "run", "output_lock", "clean_stale_temps", "write_run_manifest",
           "output_dataset"]

STAGE = "score"
_ADDED = ("label", "score", "probabilities", "embedding", "model_uri", "model_version", "error")


@dataclass(frozen=True)
class FileJob:
    """One input file and its output: plain strings and numbers, so it pickles for Prefect and Ray."""

    input_path: str  # absolute path of the input Parquet file
    rel_path: str  # its path relative to the input root (posix), mirrored in the output
    output_path: str  # absolute path of its output file
    partition: tuple[tuple[str, str], ...]  # hive partition (key, value) pairs, decoded
    input_fingerprint: str  # see fingerprint.input_fingerprint
    rows: int  # rows in the input (its footer); -1 when it cannot be read
    committed: bool  # its output exists and matches input, config and (when planned with one) model
    reason: str  # why (not) committed: new, committed, input changed, config changed, model changed, ...
    problem: str | None = None  # why the file cannot be scored (unreadable, column missing); None when fine


def added_names(cfg: ScoreConfig) -> list[str]:
    """The output columns scoring adds (with ``cfg.output_prefix``)."""
    return [cfg.output_prefix + n for n in _ADDED]


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
                read_plan(cfg, schema, dict(f.partition), flt, where, added_names(cfg))
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


def score_file(cfg: ScoreConfig, job: FileJob, model_dir: str | Path, model_uri: str | None = None,
               on_progress: ProgressFn | None = None, *, model_version: str | None = None) -> dict[str, Any]:
    """Score one input file into its output file, atomically; returns its counts.

    Idempotent: a file already committed (same input, config and model) is not
    scored again (``status="skipped"``). Bad rows are flagged, never fatal; an
    unreadable file or a missing column raises InputError. Keys: input, output,
    status, rows_in, rows_filtered, rows_out, rows_scored, rows_error,
    rows_truncated, seconds, tokens, padded_tokens, device, dtype.
    """
    from bertflow.bert_core.score.model import load_classifier
    from bertflow.bert_core.score.output import OutputSpec
    from bertflow.bert_core.score.scorer import read_plan, score_stream

    t0 = time.perf_counter()
    where = job.input_path
    if job.problem is not None:
        raise InputError(f"{where}: {job.problem}")
    out = Path(job.output_path)
    clf = load_classifier(model_dir, cfg)
    digest = config_digest(cfg)
    committed, _ = commit_status(out, job.input_fingerprint, digest, clf.fingerprint)
    if committed:
        record = read_commit(out) or {}
        return _file_result(job, "skipped", record, time.perf_counter() - t0, clf)
    try:
        pf = pq.ParquetFile(where)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{where}: not a readable Parquet file: {exc}") from None
    try:
        rp = read_plan(cfg, pf.schema_arrow, dict(job.partition), parse_filter(cfg.filter), where, added_names(cfg))
        spec = OutputSpec(
            carried=rp.carried, labels=tuple(clf.labels), probabilities=cfg.probabilities,
            embedding_dim=clf.hidden_size if cfg.embeddings != "none" else 0,
            model_uri=model_uri or str(Path(model_dir).resolve()),
            model_version=model_version or clf.fingerprint[:19], prefix=cfg.output_prefix,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(out)

        def commit_record(counts) -> dict[bytes, bytes]:
            record = {
                "version": 1, "input": job.rel_path, "input_fingerprint": job.input_fingerprint,
                "model_fingerprint": clf.fingerprint, "config_digest": digest, "model_uri": spec.model_uri,
                "model_version": spec.model_version, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **_count_fields(counts),
            }
            return {COMMIT_KEY: json.dumps(record, sort_keys=True).encode()}

        done = 0

        def on_rows(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, max(job.rows, 0))

        try:
            counts = score_stream(pf, where, tmp, clf, cfg, rp, spec, commit_record, on_rows)
            written = pq.read_metadata(tmp).num_rows
            if written != counts.rows_out:
                raise RuntimeError(f"{where}: output file holds {written} rows, expected {counts.rows_out}")
            publish(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        close = getattr(pf, "close", None)
        if close is not None:
            close()
    record = _count_fields(counts)
    return _file_result(job, "scored", record, time.perf_counter() - t0, clf,
                        extra={"tokens": counts.tokens, "padded_tokens": counts.padded_tokens,
                               "errors_by_code": dict(counts.errors_by_code)})


def _count_fields(counts) -> dict[str, int]:
    return {k: getattr(counts, k) for k in ("rows_in", "rows_filtered", "rows_out", "rows_scored", "rows_error",
                                            "rows_truncated")}


def _file_result(job: FileJob, status: str, record: dict, seconds: float, clf, extra: dict | None = None) -> dict:
    result = {"input": job.rel_path, "output": job.output_path, "status": status,
              **{k: int(record.get(k, 0)) for k in ("rows_in", "rows_filtered", "rows_out", "rows_scored",
                                                    "rows_error", "rows_truncated")},
              "seconds": round(seconds, 4), "device": str(clf.device), "dtype": str(clf.dtype).replace("torch.", "")}
    result.update(extra or {})
    return result


def run(cfg: ScoreConfig, model_dir: str | Path, out_dir: str | Path, on_progress: ProgressFn | None = None,
        model_uri: str | None = None, *, model_version: str | None = None) -> StageResult:
    """Score every pending file of ``cfg.input`` into ``out_dir``, one after another, under the lock.

    A file that cannot be scored (corrupt, column missing) is reported in the
    result and manifest (``failed``, with its reason) and the others are scored;
    the next run tries it again.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    with output_lock(out):
        stale = clean_stale_temps(out)
        jobs = plan(cfg, out, model_dir=model_dir)
        if any(not j.committed and j.problem is None for j in jobs):
            from bertflow.bert_core.score.model import load_classifier

            load_classifier(model_dir, cfg)  # a damaged model fails the run once, not each file as if it were bad
        total = sum(max(j.rows, 0) for j in jobs if not j.committed)
        base = 0
        results = []
        for job in jobs:
            if job.committed:
                results.append({"input": job.rel_path, "output": job.output_path, "status": "skipped",
                                **{k: int((read_commit(job.output_path) or {}).get(k, 0))
                                   for k in ("rows_in", "rows_out", "rows_scored", "rows_error")}})
                continue
            progress = None
            if on_progress is not None:
                def progress(done: int, _total: int, _base: int = base) -> None:
                    on_progress(_base + done, total)
            try:
                results.append(score_file(cfg, job, model_dir, model_uri=model_uri, on_progress=progress,
                                          model_version=model_version))
            except BertflowError as exc:
                results.append({"input": job.rel_path, "output": job.output_path, "status": "failed",
                                "reason": str(exc)})
            except OSError as exc:  # a full disk stops the run with one clear line (the next file would fail too)
                raise_if_disk_full(exc, job.output_path)
                raise
            base += max(job.rows, 0)
        if on_progress is not None:
            on_progress(total, total)
        return write_run_manifest(cfg, out, jobs, results, seconds=time.perf_counter() - t0, model_dir=model_dir,
                                  model_uri=model_uri, model_version=model_version, stale_removed=stale)


def write_run_manifest(cfg: ScoreConfig, out_dir: str | Path, jobs: list[FileJob], results: list[dict],
                       *, seconds: float, model_dir: str | Path, model_uri: str | None = None,
                       model_version: str | None = None, stale_removed: list[str] | None = None) -> StageResult:
    """Write ``manifest.json`` (and a copy under ``_runs/``) for one run and return its StageResult.

    ``results`` are :func:`score_file` dicts, plus ``{"status": "failed", "reason": ...}``
    or ``{"status": "skipped"}`` entries for the files that were not scored.
    """
    out = Path(out_dir)
    scored = [r for r in results if r.get("status") == "scored"]
    skipped = [r for r in results if r.get("status") == "skipped"]
    failed = [r for r in results if r.get("status") == "failed"]

    def total(key: str) -> int:
        return sum(int(r.get(key, 0)) for r in scored)

    rows_out = total("rows_out")
    metrics = {
        "files": float(len(jobs)), "files_scored": float(len(scored)), "files_skipped": float(len(skipped)),
        "files_failed": float(len(failed)), "rows_in": float(total("rows_in")),
        "rows_filtered": float(total("rows_filtered")), "rows_scored": float(total("rows_scored")),
        "rows_error": float(total("rows_error")), "rows_truncated": float(total("rows_truncated")),
        "rows_per_s": rows_out / seconds if seconds > 0 else 0.0, "seconds": seconds,
    }
    tokens, padded = total("tokens"), total("padded_tokens")
    fingerprint = hashlib.sha256("".join(f"{j.rel_path}\0{j.input_fingerprint}\n" for j in
                                         sorted(jobs, key=lambda j: j.rel_path)).encode()).hexdigest()
    known = {Path(j.output_path) for j in jobs}
    orphans = sorted(p.relative_to(out).as_posix() for p in _visible_parquet(out) if p.resolve() not in known)
    device = next((r["device"] for r in scored if "device" in r), None)
    dtype = next((r["dtype"] for r in scored if "dtype" in r), None)
    manifest = {
        "stage": STAGE, "run_id": uuid.uuid4().hex[:12], "config": to_dict(cfg), "input": cfg.input,
        "input_fingerprint": fingerprint, "model_dir": str(Path(model_dir).resolve()),
        "model_uri": model_uri, "model_version": model_version,
        "model_fingerprint": model_dir_digest(model_dir), "config_digest": config_digest(cfg),
        "device": device, "dtype": dtype, "metrics": metrics,
        "padding_efficiency": tokens / padded if padded else None,
        "files": results, "failed": [{"input": r["input"], "reason": r["reason"]} for r in failed],
        "stale_temps_removed": stale_removed or [], "orphan_outputs": orphans,
        "jobs": [asdict(j) for j in jobs],
    }
    path = write_manifest(out, manifest)
    runs = out / "_runs"
    runs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    atomic_write_bytes(runs / f"{stamp}-{manifest['run_id']}.json", path.read_bytes())
    details = {"manifest": str(path), "files": results, "failed": manifest["failed"],
               "stale_temps_removed": manifest["stale_temps_removed"], "orphan_outputs": orphans}
    return StageResult(stage=STAGE, path=str(out), metrics=metrics, details=details)


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
