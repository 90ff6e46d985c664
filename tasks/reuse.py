"""Content-keyed stage reuse: skip a stage whose inputs, config and output version are unchanged.

Prefect's own caching hashes task arguments (slow on big objects, blind to file
contents). Here a stage's key is a sha256 over: the stage name, its resolved
config, the content of its inputs, and the stage's output version
(:data:`STAGE_VERSIONS`). Not the source code: a refactor, a new log line or an
upgrade that does not change what a stage writes must not redo hours of work (the
WordPiece trainer even breaks count ties at random, so a needless vocab rerun can
change every later stage). A change that does alter a stage's output bumps its version.
A stage output directory carries ``.bertflow-stage.json`` (key + summary); a re-run
with the same key returns that summary without recomputing.

An input is fingerprinted by the key of the stage that produced it when it has one
(so a chain of unchanged stages is checked in milliseconds), else by the sha256 of
its files; on an object store (``s3://...``) by its listing (key, size, modification
time of every object), which changes with any rewrite and costs one LIST, not a download.
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.stageio import file_digest
from bertflow.bert_core.storage import is_remote, listing_digest, locate

SIDECAR = ".bertflow-stage.json"
# Bump a stage's number in the change that makes it write something else for the same inputs and config
# (a bug fix in its output, a new column): the next run recomputes that stage and, through its key, the later ones.
STAGE_VERSIONS = {"ingest": 1, "vocab": 1, "mask": 1, "pretrain": 1, "finetune": 1, "distill": 1, "score": 2}


def code_version(stage: str) -> str:
    """The stage's output version: what of the code enters its reuse key."""
    return f"{stage}/{STAGE_VERSIONS[stage]}"


def fingerprint(value: str) -> str:
    """Content fingerprint of a path, directory, glob, or (for URIs) the string itself."""
    if not value:
        return "none"
    if is_remote(value):
        loc = locate(value)
        stored = _read_json(loc.child(SIDECAR))
        return "stage:" + stored["key"] if stored and "key" in stored else "listing:" + listing_digest(loc)
    p = Path(value)
    if p.is_dir():
        side = p / SIDECAR
        if side.is_file():
            return "stage:" + json.loads(side.read_text())["key"]
        return "dir:" + _digest_files(f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith("."))
    if p.is_file():
        return "file:" + file_digest(p)
    if any(ch in value for ch in "*?["):
        return "glob:" + _digest_files(Path(f) for f in sorted(glob.glob(value, recursive=True)) if Path(f).is_file())
    return "value:" + value


def _digest_files(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


def input_fingerprints(inputs: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """``{name: [(value, fingerprint), ...]}`` for every set input (a name may hold a list)."""
    fp = {}
    for name, value in sorted(inputs.items()):
        values = value if isinstance(value, (list, tuple)) else [value]
        fp[name] = [(str(v), fingerprint(str(v))) for v in values if v not in (None, "")]
    return fp


def stage_key(stage: str, cfg: Any, inputs: dict[str, Any], fingerprints: dict | None = None) -> str:
    """The reuse key of a stage run (pass ``fingerprints`` from :func:`input_fingerprints` to avoid rehashing)."""
    fps = fingerprints if fingerprints is not None else input_fingerprints(inputs)
    fp = {name: [f for _, f in pairs] for name, pairs in fps.items()}
    body = {"stage": stage, "config": to_dict(cfg), "inputs": fp, "code": code_version(stage)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def load(out_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The stored summary if ``out_dir`` (a folder or an object-store prefix) was produced with ``key`` and is
    still complete."""
    out = locate(out_dir)
    data = _read_json(out.child(SIDECAR))
    if data is None or data.get("key") != key or not out.child("manifest.json").is_file():
        return None
    return data.get("summary")


def load_any(out_dir: str | Path) -> dict[str, Any] | None:
    """The stored summary of the last complete run that wrote ``out_dir``, whatever its key."""
    out = locate(out_dir)
    data = _read_json(out.child(SIDECAR))
    if data is None or not out.child("manifest.json").is_file():
        return None
    return data.get("summary")


def save(out_dir: str | Path, key: str, summary: dict[str, Any]) -> None:
    locate(out_dir).child(SIDECAR).write_bytes(json.dumps({"key": key, "summary": summary}, default=str).encode())


def _read_json(loc) -> dict[str, Any] | None:
    try:
        data = json.loads(loc.read_bytes())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
