"""Small synthetic masked-data and tokenizer directories, for tests and the GPU benchmark.

They follow the masked-data contract of :mod:`bert_core.mask.schema` exactly, so
the real reader reads them; they need only NumPy and pyarrow (the GPU machine has no
DuckDB, which the real masked-data generation uses).

The token streams are learnable: each segment tiles a short motif of Zipf-distributed
tokens, so a tiny model's MLM loss falls quickly (unigram frequencies first, then
copying from the motif's other occurrences); in ``nsp`` data a true next segment
continues the tiling of the first one, a random one tiles another motif.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.stageio import write_manifest

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(5)
FIRST_WORD = len(SPECIALS)


def write_tokenizer(directory: str | Path, vocab_size: int) -> Path:
    """A WordPiece tokenizer dir (``vocab.txt`` + configs) with ``vocab_size`` entries."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(vocab_size - FIRST_WORD)]
    (d / "vocab.txt").write_text("\n".join([*SPECIALS, *words]) + "\n", encoding="utf-8")
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
               "mask_token": "[MASK]"}
    (d / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512, **special}
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    return d


def write_masked_data(
    directory: str | Path,
    num_rows: int,
    seq_len: int,
    vocab_size: int,
    recipe: str = "full",
    masking: str = "static",
    masked_lm_prob: float = 0.15,
    max_predictions: int | None = None,
    rows_per_shard: int = 4096,
    row_group_rows: int = 1024,
    seed: int = 0,
) -> Path:
    """Write ``shard-*.parquet`` + ``manifest.json`` in the masked-data format.

    Static masks are drawn with the shared masking function
    (:func:`bert_core.mask.masking.mask_batch`), so their count and 80/10/10 split
    are what real generation produces.
    """
    from bertflow.bert_core.mask.masking import mask_batch
    from bertflow.bert_core.mask.schema import shard_schema

    if recipe not in ("full", "nsp") or masking not in ("static", "dynamic"):
        raise ValueError(f"recipe {recipe!r} / masking {masking!r} not supported")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    max_pred = max_predictions or max(1, int(round(seq_len * masked_lm_prob)) + 1)
    id_type = "uint16" if vocab_size <= 65536 else "uint32"
    schema = shard_schema(id_type, recipe, masking)
    specials = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
    shards, num_tokens = [], 0
    for shard_idx, start in enumerate(range(0, num_rows, rows_per_shard)):
        n = min(rows_per_shard, num_rows - start)
        rows = [_sequence(rng, seq_len, vocab_size, recipe) for _ in range(n)]
        lengths = np.array([len(r[0]) for r in rows])
        num_tokens += int(lengths.sum())
        valid = np.arange(seq_len)[None, :] < lengths[:, None]
        ids = np.full((n, seq_len), PAD, dtype=np.int64)
        ids[valid] = np.concatenate([r[0] for r in rows])
        cols: dict[str, list] = {"token_type_ids": [r[1].tolist() for r in rows]}
        if masking == "static":
            masked, labels = mask_batch(ids, valid, rng, vocab_size=vocab_size, special_ids=specials,
                                        masked_lm_prob=masked_lm_prob, max_predictions=max_pred)
            cols["input_ids"] = [masked[i, :k].tolist() for i, k in enumerate(lengths)]
            cols["masked_positions"] = [np.flatnonzero(labels[i] != -100).tolist() for i in range(n)]
            cols["masked_ids"] = [labels[i][labels[i] != -100].tolist() for i in range(n)]
        else:
            cols["input_ids"] = [ids[i, :k].tolist() for i, k in enumerate(lengths)]
        if recipe == "nsp":
            cols["next_sentence_label"] = [r[2] for r in rows]
        table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
        name = f"shard-{shard_idx:05d}.parquet"
        pq.write_table(table, d / name, row_group_size=row_group_rows)
        shards.append({"file": name, "rows": n})
    write_manifest(d, {
        "stage": "mask",
        "recipe": recipe,
        "masking": masking,
        "max_seq_length": seq_len,
        "vocab_size": vocab_size,
        "special_ids": specials,
        "num_rows": num_rows,
        "num_tokens": num_tokens,
        "shards": shards,
        "masked_lm_prob": masked_lm_prob,
        "max_predictions_per_seq": max_pred,
        "whole_word": False,
        "tokenizer_fingerprint": f"synthetic-vocab-{vocab_size}",
        "corpus_fingerprint": f"synthetic-{recipe}-{num_rows}x{seq_len}-seed{seed}",
        "seed": seed,
        "config": {"synthetic": True, "recipe": recipe, "masking": masking, "max_seq_length": seq_len},
    })
    return d


def _zipf_tokens(rng: np.random.Generator, n: int, vocab_size: int) -> np.ndarray:
    span = vocab_size - FIRST_WORD
    weights = 1.0 / np.arange(1, span + 1)
    return FIRST_WORD + rng.choice(span, size=n, p=weights / weights.sum())


def _tiled(motif: np.ndarray, length: int, phase: int = 0) -> np.ndarray:
    return motif[(phase + np.arange(length)) % len(motif)]


def _sequence(rng, seq_len, vocab_size, recipe):
    """A short Zipf-distributed motif tiled over the segment: learnable from unigrams and by copying."""
    motif = _zipf_tokens(rng, int(rng.integers(2, 5)), vocab_size)
    if recipe == "full":  # packed: always the full length
        ids = np.concatenate([[CLS], _tiled(motif, seq_len - 2), [SEP]])
        return ids, np.zeros(seq_len, dtype=np.uint8), None
    target = seq_len if rng.random() >= 0.3 else int(rng.integers(8, seq_len + 1))  # ragged lengths
    room = target - 3
    len_a = int(rng.integers(1, room))
    is_random = int(rng.random() < 0.5)
    other = _zipf_tokens(rng, int(rng.integers(2, 5)), vocab_size) if is_random else motif
    a = _tiled(motif, len_a)
    b = _tiled(other, room - len_a, phase=0 if is_random else len_a)  # a true next segment continues the tiling
    ids = np.concatenate([[CLS], a, [SEP], b, [SEP]])
    types = np.concatenate([np.zeros(len_a + 2, np.uint8), np.ones(room - len_a + 1, np.uint8)])
    return ids, types, is_random
