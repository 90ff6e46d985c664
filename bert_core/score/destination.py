"""Where a scoring job writes, and whose results an output holds.

Every job has a name: ``score.job``, or derived from the input (its last path part,
then 8 hex digits of a hash of the whole input, e.g. ``lake-1a2b3c4d``), so the default
output ``<workspace>/score/<job>`` of two lakes is never the same folder by accident.

An output records the input it holds the results of (``.score-job.json``, written under
the run lock before any output). A run for another input is refused unless
``score.overwrite`` is set, which first removes the other input's committed outputs, its
manifest and run history; files that are not ours are left alone.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import MANIFEST
from bertflow.bert_core.storage import Location, locate

CLAIM_NAME = ".score-job.json"
REUSE_SIDECAR = ".bertflow-stage.json"  # tasks.reuse.SIDECAR (bert_core does not import tasks)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIXES = (".parquet", ".parq", ".pq")


def input_identity(spec: str) -> str:
    """The input as one canonical string: an absolute local path or a normalised URI."""
    return locate(spec).uri


def job_name(cfg: Any) -> str:
    """``cfg.job``, else the input's name plus 8 hex digits of a hash of the whole input."""
    if cfg.job:
        return cfg.job
    identity = input_identity(cfg.input)
    fixed = [p for p in identity.split("/") if p and not any(ch in p for ch in "*?[")]
    name = fixed[-1] if fixed else "input"
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    name = _UNSAFE.sub("-", name).strip("-.") or "input"
    return f"{name[:60]}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def default_output(score_dir: str | Path, cfg: Any) -> str:
    """``<score_dir>/<job name>``: the output of a job that names none."""
    return str(Path(score_dir) / job_name(cfg))


def claim(out: Location, cfg: Any) -> dict[str, Any]:
    """Record that ``out`` holds ``cfg.input``'s results; refuse (or, with overwrite, clear) another input's.

    Call it under the output lock. Returns what it found: ``{"previous": input or None,
    "removed": [paths removed by overwrite]}``.
    """
    mine = input_identity(cfg.input)
    previous = _holder(out)
    removed: list[str] = []
    if previous is not None and previous != mine:
        if not cfg.overwrite:
            raise InputError(f"score output {out.uri} holds the results of another input ({previous}); "
                             f"write to another output (--output, or score.job for the default folder) or "
                             f"pass --overwrite (score.overwrite=true) to replace them")
        removed = _clear(out)
    if previous != mine:
        record = {"input": mine, "job": job_name(cfg),
                  "claimed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        out.child(CLAIM_NAME).write_bytes(json.dumps(record, indent=2).encode())
    return {"previous": previous, "removed": removed}


def _holder(out: Location) -> str | None:
    """The input ``out`` holds results of: its claim, else (outputs written before claims) its manifest."""
    for name, key in ((CLAIM_NAME, "input"), (MANIFEST, "input")):
        loc = out.child(name)
        try:
            data = json.loads(loc.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get(key), str):
            return input_identity(data[key]) if name == MANIFEST else data[key]
    return None


def _clear(out: Location) -> list[str]:
    """Remove the committed outputs, manifest, run history and reuse record of the previous input."""
    from bertflow.bert_core.score.commit import read_commit

    removed = []
    for info in out.files():
        rel = out.rel_of(info.path)
        first = rel.split("/", 1)[0]
        ours = rel in (MANIFEST, CLAIM_NAME, REUSE_SIDECAR) or first == "_runs" or (
            posixpath.basename(rel).endswith(_SUFFIXES) and read_commit(info.path, out.fs) is not None)
        if ours:
            out.fs.delete_file(info.path)
            removed.append(rel)
    return sorted(removed)
