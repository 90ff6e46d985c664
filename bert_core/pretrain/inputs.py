"""What pretraining needs to know about its inputs, checked up front with clear errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertflow.bert_core.errors import InputError

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
_SPECIALS = ("pad", "cls", "sep", "mask", "unk")
# manifest keys that identify the data's content (timestamps and versions excluded)
_FINGERPRINT_KEYS = ("recipe", "masking", "max_seq_length", "vocab_size", "special_ids", "num_rows", "num_tokens",
                     "shards", "masked_lm_prob", "max_predictions_per_seq", "whole_word", "tokenizer_fingerprint",
                     "corpus_fingerprint", "seed", "config")


@dataclass(frozen=True)
class DataInfo:
    data_dir: Path
    manifest: dict[str, Any]
    num_rows: int
    vocab_size: int
    max_seq_length: int
    special_ids: dict[str, int]
    has_nsp: bool
    dynamic: bool  # masks drawn at load time
    masked_lm_prob: float
    max_predictions: int
    fingerprint: str


def read_data_info(data_dir: str | Path) -> DataInfo:
    """The masked data's facts; the shared reader validates the manifest and shard files."""
    from bertflow.bert_core.mask.reader import MaskedDataset

    d = Path(data_dir)
    ds = MaskedDataset(d)
    m = ds.manifest
    where = d / "manifest.json"
    if m["recipe"] not in ("full", "nsp") or m["masking"] not in ("static", "dynamic"):
        raise InputError(f"{where}: recipe {m['recipe']!r} / masking {m['masking']!r} not understood")
    if any(k not in ds.special_ids for k in _SPECIALS):
        raise InputError(f"{where}: special_ids must name {', '.join(_SPECIALS)}")
    if ds.num_rows < 1:
        raise InputError(f"{where}: the masked data is empty (num_rows = {ds.num_rows})")
    body = json.dumps({k: m.get(k) for k in _FINGERPRINT_KEYS}, sort_keys=True, default=str)
    return DataInfo(
        data_dir=d,
        manifest=m,
        num_rows=ds.num_rows,
        vocab_size=ds.vocab_size,
        max_seq_length=ds.max_seq_length,
        special_ids=dict(ds.special_ids),
        has_nsp=m["recipe"] == "nsp",
        dynamic=m["masking"] == "dynamic",
        masked_lm_prob=float(m["masked_lm_prob"]),
        max_predictions=int(m["max_predictions_per_seq"]),
        fingerprint=hashlib.sha256(body.encode()).hexdigest(),
    )


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    """Entries in the tokenizer's vocabulary (``vocab.txt`` lines, or ``tokenizer.json``)."""
    d = Path(tokenizer_dir)
    vocab = d / "vocab.txt"
    if vocab.is_file():
        lines = vocab.read_text(encoding="utf-8").split("\n")  # as transformers reads it (not splitlines)
        return len(lines) - (lines[-1] == "")
    tok = d / "tokenizer.json"
    if tok.is_file():
        try:
            data = json.loads(tok.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{tok} is unreadable: {exc}") from None
        ids = list((data.get("model") or {}).get("vocab", {}).values())
        ids += [t.get("id", -1) for t in data.get("added_tokens") or []]
        return max(ids) + 1 if ids else 0
    raise InputError(f"{d} is not a tokenizer directory: neither vocab.txt nor tokenizer.json is there")


def check_tokenizer(tokenizer_dir: str | Path, data: DataInfo) -> None:
    d = Path(tokenizer_dir)
    if not d.is_dir():
        raise InputError(f"tokenizer directory {d} does not exist")
    size = tokenizer_vocab_size(d)
    if size != data.vocab_size:
        raise InputError(
            f"vocab size mismatch: tokenizer {d} has {size} entries but the masked data "
            f"{data.data_dir / 'manifest.json'} says vocab_size {data.vocab_size}; "
            "pass the tokenizer the data was generated with"
        )
