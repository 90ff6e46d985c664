"""Fingerprints that decide whether a file's committed output is still valid.

An output is reused only when the input file, the model (``stageio.model_dir_digest``)
and the output-shaping config are all unchanged. The input fingerprint defaults to size + Parquet footer:
the footer holds every row group's byte offsets, sizes and statistics, so any
rewrite of the data changes it, and reading it costs one small read instead of
hashing the whole lake on every plan. ``input_fingerprint="content"`` hashes the bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from bertflow.bert_core.stageio import file_digest

from bertflow.bert_core.score.config import ScoreConfig

_TAIL = 1 << 16
# Keys that change what is written; device, batch sizes and threading do not.
_OUTPUT_KEYS = ("text_column", "text_pair_column", "key_columns", "filter", "max_length", "probabilities",
                "embeddings", "non_string_text", "output_prefix")
# Keys of the token and qa heads: they count only when set to something else than their default, so
# outputs committed before these keys existed (sequence models) stay committed.
_HEAD_KEYS = ("head", "question_column", "context_column", "stride", "max_windows", "aggregation", "tokens",
              "max_answer_length", "null_threshold")


def input_fingerprint(path: str | Path, mode: str = "footer") -> str:
    """``footer:<sha256 of size + footer>`` or ``sha256:<content digest>``; a non-Parquet file hashes its tail."""
    path = Path(path)
    if mode == "content":
        return "sha256:" + file_digest(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        footer = b""
        if size >= 12:
            fh.seek(size - 8)
            tail = fh.read(8)
            length = struct.unpack("<I", tail[:4])[0]
            if tail[4:] == b"PAR1" and length + 8 <= size:
                fh.seek(size - 8 - length)
                footer = fh.read(length + 8)
        if not footer:  # not a Parquet file (it will fail when read): hash its head and tail
            fh.seek(0)
            footer = fh.read(_TAIL)
            if size > _TAIL:
                fh.seek(max(size - _TAIL, _TAIL))
                footer += fh.read(_TAIL)
        h.update(footer)
    return "footer:" + h.hexdigest()


def config_digest(cfg: ScoreConfig) -> str:
    """sha256 of the config keys that shape the output (not device, batch sizes or threads)."""
    body = {k: getattr(cfg, k) for k in _OUTPUT_KEYS}
    body["key_columns"] = list(body["key_columns"]) if body["key_columns"] is not None else None
    defaults = ScoreConfig.model_fields
    body.update({k: getattr(cfg, k) for k in _HEAD_KEYS if getattr(cfg, k) != defaults[k].default})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
