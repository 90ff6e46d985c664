"""Scoring one input file into its output file, atomically; and ``FileWork``, the form a runner ships to a worker.

Kept apart from ``stage`` (which plans, checks and commits a whole run) because this is
what runs on the workers: it must not depend on where it runs, and everything it needs
travels in one picklable ``FileWork``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.errors import BertflowError, InputError
from bertflow.bert_core.stageio import ProgressFn, raise_if_disk_full

from bertflow.bert_core.score.commit import COMMIT_KEY, commit_status, publish, read_commit, temp_path
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.filters import parse_filter
from bertflow.bert_core.score.fingerprint import config_digest
from bertflow.bert_core.stageio import model_dir_digest
from bertflow.bert_core.score.output import OutputSpec
from bertflow.bert_core.score.results import COUNTS, FileJob, FileResult


def score_file(cfg: ScoreConfig, job: FileJob, model_dir: str | Path, model_uri: str | None = None,
               on_progress: ProgressFn | None = None, *, model_version: str | None = None) -> FileResult:
    """Score one input file into its output file, atomically.

    Idempotent: a file already committed (same input, config and model) is not
    scored again (``status="skipped"``). Bad rows are flagged, never fatal; an
    unreadable file or a missing column raises InputError.
    """
    from bertflow.bert_core.score.heads import make_head
    from bertflow.bert_core.score.model import load_classifier
    from bertflow.bert_core.score.scorer import read_plan, score_stream

    t0 = time.perf_counter()
    where = job.input_path
    if job.problem is not None:
        raise InputError(f"{where}: {job.problem}")
    out = Path(job.output_path)
    digest = config_digest(cfg)
    if commit_status(out, job.input_fingerprint, digest, model_dir_digest(model_dir))[0]:
        return FileResult.skipped(job, read_commit(out))
    clf = load_classifier(model_dir, cfg)
    head = make_head(cfg, clf)
    try:
        pf = pq.ParquetFile(where)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{where}: not a readable Parquet file: {exc}") from None
    try:
        rp = read_plan(cfg, pf.schema_arrow, dict(job.partition), parse_filter(cfg.filter), where, clf.head)
        spec = OutputSpec(
            carried=rp.carried, head_fields=tuple(head.fields()),
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
            counts = score_stream(pf, where, tmp, clf, head, cfg, rp, spec, commit_record, on_rows)
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
    return FileResult.scored(job, counts, time.perf_counter() - t0, str(clf.device),
                             str(clf.dtype).replace("torch.", ""))


@dataclass(frozen=True)
class FileWork:
    """Scoring one file, as a runner ships it to a worker: config and model, all picklable."""

    cfg: ScoreConfig
    model_dir: str
    model_uri: str | None = None
    model_version: str | None = None

    def __call__(self, job: FileJob, on_progress: ProgressFn | None = None) -> FileResult:
        """Score ``job``: a problem with this file is a failed result; a full disk raises one clear InputError."""
        try:
            return score_file(self.cfg, job, self.model_dir, self.model_uri, on_progress,
                              model_version=self.model_version)
        except BertflowError as exc:  # a bad file is reported, the others go on
            return FileResult.failed(job, str(exc))
        except OSError as exc:  # a full disk stops the run with one clear line (the next file would fail too)
            raise_if_disk_full(exc, job.output_path)
            raise
