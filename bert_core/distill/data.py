"""Training text for distillation: the labelled set, plus unlabeled text the teacher alone labels."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bertflow.bert_core.distill.loss import NO_GOLD
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.encode import Encoded, encode_texts, encode_words

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}


def read_unlabeled(patterns: Sequence[str], column: str, limit: int | None, seed: int) -> list[str]:
    """Non-blank texts from Parquet/CSV/TSV/JSONL files, directories or globs, and from plain text files
    (one text per line); a seeded sample of ``limit`` when there are more."""
    texts: list[str] = []
    for pattern in patterns:
        paths = sorted(glob.glob(str(pattern), recursive=True)) or ([pattern] if Path(pattern).exists() else [])
        if not paths:
            raise InputError(f"distill.unlabeled: no file matches {pattern!r}")
        for path in paths:
            texts.extend(_read_one(Path(path), column))
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise InputError(f"distill.unlabeled: {', '.join(map(str, patterns))} hold no text")
    if limit is not None and len(texts) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _read_one(path: Path, column: str) -> list[str]:
    import pyarrow.dataset as ds

    if path.is_dir():
        fmt = "parquet"
    else:
        suffixes = [s for s in path.suffixes if s not in (".gz", ".zst")]
        fmt = _FORMATS.get(suffixes[-1].lower() if suffixes else "", "text")
    if fmt == "text":
        import pyarrow as pa

        with pa.input_stream(str(path), compression="detect") as stream:
            return stream.read().decode("utf-8", errors="replace").splitlines()
    options = {}
    if fmt == "csv" and ".tsv" in [s.lower() for s in path.suffixes]:
        import pyarrow.csv as pcsv

        options["format"] = ds.CsvFileFormat(parse_options=pcsv.ParseOptions(delimiter="\t"))
    dataset = ds.dataset(str(path), format=options.get("format", fmt))
    if column not in dataset.schema.names:
        raise InputError(f"distill.unlabeled: {path} has no column {column!r} (columns: "
                         f"{', '.join(dataset.schema.names)}); set distill.unlabeled_column")
    return [t for t in dataset.to_table(columns=[column]).column(column).to_pylist() if isinstance(t, str)]


def encode_unlabeled(tokenizer, texts: Sequence[str], task: str, max_length: int,
                     continuation: Sequence[int] | None = None) -> Encoded:
    """Model inputs for text with no gold label: every label slot is ``NO_GOLD`` (the teacher's soft label only)."""
    if task == "token":
        words = [t.split() for t in texts]
        return encode_words(tokenizer, words, [[NO_GOLD] * len(w) for w in words], max_length, continuation)
    return encode_texts(tokenizer, list(texts), None, [NO_GOLD] * len(texts), max_length)


def concat(a: Encoded, b: Encoded) -> Encoded:
    """``a`` then ``b`` as one training set (token type ids kept only when both have them)."""
    types = a.token_type_ids + b.token_type_ids if a.token_type_ids is not None and b.token_type_ids is not None \
        else None
    starts = a.word_starts + b.word_starts if a.word_starts is not None and b.word_starts is not None else None
    return Encoded(a.input_ids + b.input_ids, types, (a.labels or []) + (b.labels or []), starts)
