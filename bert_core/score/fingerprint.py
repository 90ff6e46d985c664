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

from bertflow.bert_core.storage import Location, ReadCounter, locate, open_counted

from bertflow.bert_core.score.config import ScoreConfig

_TAIL = 1 << 16
# Keys that change what is written; device, batch sizes and threading do not.
_OUTPUT_KEYS = ("text_column", "text_pair_column", "key_columns", "where", "max_length", "probabilities",
                "embeddings", "non_string_text", "output_prefix")
# Keys of the token and qa heads: they count only when set to something else than their default, so
# outputs committed before these keys existed (sequence models) stay committed.
_HEAD_KEYS = ("head", "question_column", "context_column", "stride", "max_windows", "aggregation", "tokens",
              "max_answer_length", "null_threshold")
# What runs the model: int8 arithmetic gives (slightly) other scores, so a file scored by another backend is
# redone; counted only when not torch, so outputs committed before the key existed stay committed.
_BACKEND_KEYS = ("backend",)


def read_footer(fh) -> bytes:
    """A Parquet file's footer (metadata, its length, ``PAR1``): exactly the bytes needed, no speculative
    64 KiB tail read; ``b""`` when ``fh`` holds no Parquet file. ``pq.read_metadata(pa.BufferReader(footer))``
    and a pyarrow.dataset fragment made from it parse it without another read."""
    size = fh.size()
    if size < 12:
        return b""
    fh.seek(size - 8)
    tail = fh.read(8)
    length = struct.unpack("<I", tail[:4])[0]
    if tail[4:] != b"PAR1" or length + 8 > size:
        return b""
    fh.seek(size - 8 - length)
    return fh.read(length) + tail


def footer_and_fingerprint(source: Location | str | Path, mode: str = "footer",
                           counter: ReadCounter | None = None) -> tuple[bytes, str]:
    """``(footer, fingerprint)`` of an input file in one pass: ``footer:<sha256 of size + footer>`` or
    ``sha256:<content digest>``; a non-Parquet file (empty footer) hashes its head and tail.

    ``source`` is local or on an object store (the same digest for the same bytes);
    ``counter`` adds the bytes read.
    """
    loc = source if isinstance(source, Location) else locate(source)
    counter = counter if counter is not None else ReadCounter()
    with open_counted(loc, counter) as fh:
        footer = read_footer(fh)
        if mode == "content":
            fh.seek(0)
            h = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return footer, "sha256:" + h.hexdigest()
        size = fh.size()
        h = hashlib.sha256(str(size).encode())
        body = footer
        if not body:  # not a Parquet file (it will fail when read): hash its head and tail
            fh.seek(0)
            body = fh.read(_TAIL)
            if size > _TAIL:
                fh.seek(max(size - _TAIL, _TAIL))
                body += fh.read(_TAIL)
        h.update(body)
    return footer, "footer:" + h.hexdigest()


def input_fingerprint(source: Location | str | Path, mode: str = "footer", counter: ReadCounter | None = None) -> str:
    """The fingerprint half of :func:`footer_and_fingerprint`."""
    return footer_and_fingerprint(source, mode, counter)[1]


def config_digest(cfg: ScoreConfig) -> str:
    """sha256 of the config keys that shape the output (not device, batch sizes or threads)."""
    body = {k: getattr(cfg, k) for k in _OUTPUT_KEYS}
    body["filter"] = body.pop("where")  # the key's old name: outputs committed before the rename stay valid
    body["key_columns"] = list(body["key_columns"]) if body["key_columns"] is not None else None
    defaults = ScoreConfig.model_fields
    body.update({k: getattr(cfg, k) for k in (*_HEAD_KEYS, *_BACKEND_KEYS) if getattr(cfg, k) != defaults[k].default})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
