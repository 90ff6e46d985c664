"""The masked-data reader: batches, O(1) resume, deterministic dynamic masking, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.documents import write_corpus
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.mask.masking import IGNORE_INDEX, word_start_table
from bertflow.bert_core.mask.reader import MaskedDataset, to_torch
from bertflow.bert_core.mask.stage import run
from tests.helpers import synthetic_documents, train_wordpiece

SEQ = 48
KW = dict(max_seq_length=SEQ, rows_per_shard=400, row_group_rows=64, num_workers=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    docs = synthetic_documents(150, seed=1)
    tok = train_wordpiece(root / "tok", docs, vocab_size=600)
    corpus = write_corpus(root / "corpus", docs)
    out = {"root": root, "tok": tok}
    out["static"] = root / "static"
    run(MaskConfig(recipe="nsp", **KW), corpus, tok, out["static"])
    out["dynamic"] = root / "dynamic"
    run(MaskConfig(recipe="full", masking="dynamic", whole_word=True, **KW), corpus, tok, out["dynamic"])
    return out


def stored(path) -> dict[str, list]:
    manifest = json.loads((path / "manifest.json").read_text())
    return pa.concat_tables([pq.read_table(path / s["file"]) for s in manifest["shards"]]).to_pydict()


def cat(batches: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_static_batches_hold_the_stored_rows_and_masks(data):
    ds = MaskedDataset(data["static"])
    rows = stored(data["static"])
    assert ds.num_rows == len(rows["input_ids"]) > 1000 and len(ds.files) >= 3
    assert ds.recipe == "nsp" and ds.vocab_size == 600 and set(ds.special_ids) == {"pad", "unk", "cls", "sep", "mask"}
    batches = list(ds.iter_batches(100))
    assert len(batches) == ds.num_batches(100) == -(-ds.num_rows // 100)
    b = cat(batches)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert b[key].dtype == np.int64 and b[key].shape == (ds.num_rows, SEQ)
    assert b["next_sentence_label"].tolist() == rows["next_sentence_label"]
    for i in range(0, ds.num_rows, 97):
        n = len(rows["input_ids"][i])
        assert b["input_ids"][i, :n].tolist() == rows["input_ids"][i]
        assert (b["input_ids"][i, n:] == ds.special_ids["pad"]).all()
        assert b["attention_mask"][i].sum() == n and b["token_type_ids"][i, :n].tolist() == rows["token_type_ids"][i]
        predicted = np.flatnonzero(b["labels"][i] != IGNORE_INDEX)
        assert predicted.tolist() == rows["masked_positions"][i]
        assert b["labels"][i, predicted].tolist() == rows["masked_ids"][i]


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_resuming_at_any_row_gives_the_tail_of_a_full_read(data, kind):
    ds = MaskedDataset(data[kind])
    size = 50
    full = list(ds.iter_batches(size, seed=3))
    shard0 = ds.manifest["shards"][0]["rows"]
    for start in (0, 50, 650, 700, shard0 // size * size, 1000, (ds.num_rows // size - 1) * size):
        tail = list(ds.iter_batches(size, start_row=start, seed=3))
        assert len(tail) == len(full) - start // size
        for x, y in zip(tail, full[start // size:]):
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    # a start inside a batch still reads exactly the rows from there
    odd = cat(list(ds.iter_batches(size, start_row=777, seed=3)))
    whole = cat(full)
    assert np.array_equal(odd["attention_mask"], whole["attention_mask"][777:])
    if kind == "static":
        assert np.array_equal(odd["labels"], whole["labels"][777:])


def test_seeking_never_opens_earlier_shards(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data["static"], copy)
    ds = MaskedDataset(copy)
    last_start = ds.num_rows - ds.manifest["shards"][-1]["rows"]
    expected = list(ds.iter_batches(32, start_row=last_start + 5))
    for s in ds.manifest["shards"][:-1]:
        (copy / s["file"]).write_bytes(b"gone")  # earlier shards are now unreadable
    again = list(ds.iter_batches(32, start_row=last_start + 5))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(expected, again))
    with pytest.raises(InputError, match=ds.manifest["shards"][0]["file"]):
        next(ds.iter_batches(32))


def test_dynamic_masking_is_deterministic_per_batch_and_seed(data):
    ds = MaskedDataset(data["dynamic"])
    rows = stored(data["dynamic"])
    a = cat(list(ds.iter_batches(64, seed=5)))
    b = cat(list(ds.iter_batches(64, seed=5)))
    c = cat(list(ds.iter_batches(64, seed=6)))
    assert np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["labels"], c["labels"])
    original = np.full_like(a["input_ids"], ds.special_ids["pad"])
    for i, r in enumerate(rows["input_ids"]):
        original[i, :len(r)] = r
    predicted = a["labels"] != IGNORE_INDEX
    assert np.array_equal(a["labels"][predicted], original[predicted])  # labels are the stored tokens
    assert np.array_equal(a["input_ids"][~predicted], original[~predicted])  # nothing else changes
    rate = predicted.sum() / (~np.isin(original, list(ds.special_ids.values()))).sum()
    assert abs(rate - 0.15) < 0.01
    assert (predicted.sum(axis=1) <= ds.manifest["max_predictions_per_seq"]).all()
    # whole-word data (the manifest carries the continuation pieces): no word is split
    tok = json.loads((data["tok"] / "tokenizer.json").read_text())["model"]["vocab"]
    starts = word_start_table(tok, ds.vocab_size)[original]
    cont = ~starts[:, 1:] & ~np.isin(original[:, :-1], list(ds.special_ids.values())) & (original[:, 1:] != 0)
    assert cont.sum() > 1000
    assert np.array_equal(predicted[:, 1:][cont], predicted[:, :-1][cont])


def test_padding_options_drop_last_and_torch(data):
    ds = MaskedDataset(data["dynamic"])
    longest = next(ds.iter_batches(8, pad_to="longest"))
    assert longest["input_ids"].shape[1] == longest["attention_mask"].sum(axis=1).max() <= SEQ
    assert "next_sentence_label" not in longest
    kept = list(ds.iter_batches(1000, drop_last=True))
    assert len(kept) == ds.num_rows // 1000 == ds.num_batches(1000, drop_last=True)
    assert all(len(b["input_ids"]) == 1000 for b in kept)
    tensors = to_torch(next(ds.iter_batches(4)))
    import torch

    assert tensors["input_ids"].dtype == torch.int64 and tuple(tensors["labels"].shape) == (4, SEQ)


def test_missing_shard_or_manifest_is_an_input_error(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data["static"], copy)
    name = json.loads((copy / "manifest.json").read_text())["shards"][1]["file"]
    (copy / name).unlink()
    with pytest.raises(InputError, match=name):
        MaskedDataset(copy)
    with pytest.raises(InputError, match="manifest.json"):
        MaskedDataset(data["tok"])
    with pytest.raises(InputError, match="does not exist"):
        MaskedDataset(tmp_path / "nowhere")
