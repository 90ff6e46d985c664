"""Scoring one input file into its output file, atomically; and ``FileWork``, the form a runner ships to a worker.

Kept apart from ``stage`` (which plans, checks and commits a whole run) because this is
what runs on the workers: it must not depend on where it runs, and everything it needs
travels in one picklable ``FileWork``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.errors import BertflowError, InputError
from bertflow.bert_core.stageio import ProgressFn, model_dir_digest, raise_if_disk_full
from bertflow.bert_core.storage import ReadCounter, locate, open_counted

from bertflow.bert_core.score.commit import COMMIT_KEY, commit_status, discard, publish, read_commit, temp_path
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.fingerprint import config_digest, read_footer
from bertflow.bert_core.score.lake import output_relpath, typed_partition
from bertflow.bert_core.score.output import OutputSpec
from bertflow.bert_core.score.results import COUNTS, FileJob, FileResult
from bertflow.bert_core.score.where import parse_where


def score_file(cfg: ScoreConfig, job: FileJob, model_dir: str | Path, model_uri: str | None = None,
               on_progress: ProgressFn | None = None, *, model_version: str | None = None,
               cache_dir: str | Path | None = None) -> FileResult:
    """Score one input file into its output file, atomically (local or object store, in or out).

    Idempotent: a file already committed (same input, config and model) is not
    scored again (``status="skipped"``). Bad rows are flagged, never fatal; an
    unreadable file or a missing column raises InputError. Row groups whose statistics
    rule out ``score.where`` are not read. ``cache_dir``: where the ONNX backends keep their
    files (``stage.run`` gates them before any file).
    """
    from bertflow.bert_core.score.heads import make_head
    from bertflow.bert_core.score.model import load_classifier
    from bertflow.bert_core.score.scorer import score_stream

    t0 = time.perf_counter()
    where = job.input_path
    if job.problem is not None:
        raise InputError(f"{where}: {job.problem}")
    out = locate(job.output_path)
    digest = config_digest(cfg)
    if commit_status(out, job.input_fingerprint, digest, model_dir_digest(model_dir))[0]:
        return FileResult.skipped(job, read_commit(out.path, out.fs))
    clf = load_classifier(model_dir, cfg, cache_dir)
    head = make_head(cfg, clf)
    counter = ReadCounter()
    source, pf, rp = _open(cfg, job, counter, clf.head)
    try:
        spec = OutputSpec(
            carried=rp.carried, head_fields=tuple(head.fields()),
            model_uri=model_uri or str(Path(model_dir).resolve()),
            model_version=model_version or clf.fingerprint[:19], prefix=cfg.output_prefix,
        )
        if not out.remote:
            Path(out.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(out.path, _output_root(out.path, job.rel_path) if out.remote else None)

        def commit_record(counts) -> dict[bytes, bytes]:
            record = {
                "version": 1, "input": job.rel_path, "input_fingerprint": job.input_fingerprint,
                "model_fingerprint": clf.fingerprint, "config_digest": digest, "model_uri": spec.model_uri,
                "model_version": spec.model_version, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **{k: getattr(counts, k) for k in COUNTS},
            }
            return {COMMIT_KEY: json.dumps(record, sort_keys=True).encode()}

        done = 0

        def on_rows(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, max(job.rows, 0))

        try:
            counts = score_stream(pf, where, tmp, clf, head, cfg, rp, spec, commit_record, on_rows, filesystem=out.fs)
            written = pq.read_metadata(tmp, filesystem=out.fs).num_rows
            if written != counts.rows_out:
                raise RuntimeError(f"{where}: output file holds {written} rows, expected {counts.rows_out}")
            publish(out.fs, tmp, out.path)
        except BaseException:
            discard(out.fs, tmp)
            raise
    finally:
        source.close()
    groups = pf.metadata.num_row_groups
    counts.row_groups_read = groups if rp.row_groups is None else len(rp.row_groups)
    counts.row_groups_skipped = groups - counts.row_groups_read
    counts.bytes_read = counter.bytes
    return FileResult.scored(job, counts, time.perf_counter() - t0, str(clf.device), clf.precision)


def _open(cfg: ScoreConfig, job: FileJob, counter: ReadCounter, head: str):
    """``(source, ParquetFile, ReadPlan)`` of a job's input; the plan lists the row groups to read.

    The footer is read once (exactly), into a pyarrow.dataset fragment: its ``subset`` keeps the
    row groups whose min/max/null-count statistics leave some row able to match
    ``score.where``. The caller closes ``source``.
    """
    import pyarrow.dataset as ds

    from bertflow.bert_core.score.scorer import read_plan

    where = job.input_path
    source = None
    try:
        source = open_counted(locate(where), counter)
        footer = read_footer(source)
        if not footer:
            raise OSError("no Parquet footer (not Parquet, or cut short)")
        fragment = ds.ParquetFileFormat().make_fragment(pa.BufferReader(footer))  # statistics, no second read
        fragment.ensure_complete_metadata()
        pf = pq.ParquetFile(source, metadata=fragment.metadata)
    except (pa.ArrowException, OSError) as exc:
        if source is not None:
            source.close()
        raise InputError(f"{where}: not a readable Parquet file: {exc}") from None
    try:
        partition = typed_partition(job.partition, dict(job.partition_types))
        rp = read_plan(cfg, pf.schema_arrow, partition, parse_where(cfg.where), where, head)
        if rp.filter is not None:
            kept = tuple(g.id for g in fragment.subset(rp.filter.expression).row_groups)
            rp = dataclasses.replace(rp, row_groups=kept)
    except BaseException:
        source.close()
        raise
    return source, pf, rp


def _output_root(output: str, rel: str) -> str:
    """The output folder's path, from a job's output path and the input's relative path it mirrors."""
    return output[: len(output) - len(output_relpath(PurePosixPath(rel)).as_posix())].rstrip("/")


def selected_rows(cfg: ScoreConfig, job: FileJob, columns: list[str] | None = None, *,
                  head: str | None = None, limit: int | None = None) -> pa.Table:
    """The rows of a job's file that ``score.where`` selects, read exactly as scoring reads them
    (row groups pruned by statistics, then rows by the condition); no model involved.

    ``head``: whose input columns must be there (default: ``score.head``, sequence for auto);
    ``limit``: stop after this many rows (the parity gate's slice reads no more than it needs).
    """
    from bertflow.bert_core.score.heads import head_name
    from bertflow.bert_core.score.scorer import read_batches

    source, pf, rp = _open(cfg, job, ReadCounter(), head or head_name(cfg, None))
    try:
        names = columns or list(rp.read_columns)
        rp = dataclasses.replace(rp, read_columns=tuple(dict.fromkeys([*names, *rp.read_columns])))
        batches, have = [], 0
        for b, _ in read_batches(pf, job.input_path, cfg, rp):
            if limit is not None and have + b.num_rows > limit:
                b = b.slice(0, limit - have)
            batches.append(b.select(names))
            have += b.num_rows
            if limit is not None and have >= limit:
                break
        return pa.Table.from_batches(batches, schema=pa.schema([pf.schema_arrow.field(n) for n in names]))
    finally:
        source.close()


@dataclass(frozen=True)
class FileWork:
    """Scoring one file, as a runner ships it to a worker: config and model, all picklable."""

    cfg: ScoreConfig
    model_dir: str
    model_uri: str | None = None
    model_version: str | None = None
    cache_dir: str | None = None  # the ONNX backends' files (a local folder every worker can read, or rebuild in)

    def __call__(self, job: FileJob, on_progress: ProgressFn | None = None) -> FileResult:
        """Score ``job``: a problem with this file is a failed result; a full disk raises one clear InputError."""
        try:
            return score_file(self.cfg, job, self.model_dir, self.model_uri, on_progress,
                              model_version=self.model_version, cache_dir=self.cache_dir)
        except BertflowError as exc:  # a bad file is reported, the others go on
            return FileResult.failed(job, str(exc))
        except OSError as exc:  # a full disk stops the run with one clear line (the next file would fail too)
            raise_if_disk_full(exc, job.output_path)
            raise
