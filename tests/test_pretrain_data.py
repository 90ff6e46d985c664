"""The batch stream: packing, determinism, O(1) resume, rank strides, epoch wrap, dynamic masks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertflow.bert_core.pretrain.batch import pack_batch
from bertflow.bert_core.pretrain.data import PretrainStream, RowReader, make_loader
from bertflow.bert_core.pretrain.inputs import read_data_info
from bertflow.bert_core.pretrain.synthetic import write_masked_data

ROWS, SEQ, VOCAB, BATCH = 90, 24, 200, 8  # 90 rows: not a multiple of the batch, so epochs wrap mid-batch


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
    return write_masked_data(tmp_path_factory.mktemp("static"), ROWS, SEQ, VOCAB, recipe="nsp", rows_per_shard=40)


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory):
    return write_masked_data(tmp_path_factory.mktemp("dyn"), ROWS, SEQ, VOCAB, masking="dynamic", rows_per_shard=40)


def batches(stream, n):
    return list(itertools.islice(iter(stream), n))


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip((a.input_ids, a.labels, a.cu_seqlens), (b.input_ids, b.labels,
                                                                                          b.cu_seqlens)))


def test_pack_batch_drops_padding_and_finds_targets():
    ids = np.array([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]])
    attn = (ids != 0).astype(int)
    labels = np.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = 11, 12
    b = pack_batch({"input_ids": ids, "attention_mask": attn, "token_type_ids": np.zeros_like(ids),
                    "labels": labels}, max_predictions=2)
    assert b.input_ids.tolist() == [2, 7, 8, 3, 2, 9, 3]
    assert b.position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert b.cu_seqlens.tolist() == [0, 4, 7] and b.max_seqlen == 4 and b.dense_seqlen is None
    assert b.pad_index.tolist() == [0, 1, 2, 3, 4, 5, 6]  # row * max_len + position
    assert b.mlm_positions.tolist() == [2, 5, 0, 0] and b.mlm_labels.tolist() == [11, 12, -100, -100]
    assert b.num_masked == 2 and b.num_tokens == 7 and b.sum_sq_len == 16 + 9
    assert b.cls_positions.tolist() == [0, 4] and b.nsp_labels is None


def test_synthetic_data_follows_the_masked_data_schema(static_dir):
    manifest = json.loads((static_dir / "manifest.json").read_text())
    assert manifest["num_rows"] == ROWS and [s["rows"] for s in manifest["shards"]] == [40, 40, 10]
    table = pq.read_table(static_dir / "shard-00000.parquet")
    schema = table.schema
    for name, item in [("input_ids", pa.uint16()), ("token_type_ids", pa.uint8()), ("masked_positions", pa.uint16()),
                       ("masked_ids", pa.uint16())]:
        assert pa.types.is_list(schema.field(name).type) and schema.field(name).type.value_type == item, name
    assert schema.field("next_sentence_label").type == pa.int8()
    row = table.slice(0, 1).to_pylist()[0]
    assert row["input_ids"][0] == manifest["special_ids"]["cls"] and row["masked_positions"] == sorted(
        row["masked_positions"])


def test_stream_is_the_same_with_any_number_of_workers(static_dir):
    info = read_data_info(static_dir)
    stream = PretrainStream(info, BATCH, start=0, max_predictions=info.max_predictions)
    plain = batches(stream, 7)
    loaded = list(itertools.islice(iter(make_loader(stream, num_workers=2, pin_memory=False, prefetch_factor=2)), 7))
    assert all(same(a, b) for a, b in zip(plain, loaded))


def test_resume_position_gives_the_same_batches_as_continuing(static_dir):
    info = read_data_info(static_dir)
    full = batches(PretrainStream(info, BATCH, start=0), 30)  # > 2 epochs
    resumed = batches(PretrainStream(info, BATCH, start=17), 13)
    assert all(same(a, b) for a, b in zip(full[17:], resumed))


def test_ranks_read_disjoint_strides_that_cover_the_stream(static_dir):
    info = read_data_info(static_dir)
    single = batches(PretrainStream(info, BATCH, start=4), 12)
    rank0 = batches(PretrainStream(info, BATCH, start=4, rank=0, world_size=3), 4)
    rank1 = batches(PretrainStream(info, BATCH, start=4, rank=1, world_size=3), 4)
    rank2 = batches(PretrainStream(info, BATCH, start=4, rank=2, world_size=3), 4)
    interleaved = [b for trio in zip(rank0, rank1, rank2) for b in trio]
    assert all(same(a, b) for a, b in zip(single, interleaved))


def test_epochs_wrap_around_mid_batch(static_dir):
    info = read_data_info(static_dir)
    reader = RowReader(info, BATCH, seed=0)
    wrapped = reader.read(ROWS - 3)  # 3 rows from the end of epoch 0, 5 from the start of epoch 1
    tail = RowReader(info, 3, seed=0).read(ROWS - 3)
    head = RowReader(info, 5, seed=0).read(0)
    for key in ("input_ids", "labels"):
        w = tail[key].shape[1]
        np.testing.assert_array_equal(wrapped[key][:3, :w], tail[key])
        w = head[key].shape[1]
        np.testing.assert_array_equal(wrapped[key][3:, :w], head[key])


def test_dynamic_masks_are_reproducible_and_differ_between_epochs(dynamic_dir):
    info = read_data_info(dynamic_dir)
    assert info.dynamic
    a = RowReader(info, BATCH, seed=5).read(16)
    b = RowReader(info, BATCH, seed=5).read(16)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert (a["labels"] != -100).any()
    next_epoch = RowReader(info, BATCH, seed=5).read(16 + ROWS)  # the same rows one epoch later
    assert not np.array_equal(a["labels"], next_epoch["labels"])
    originals = np.where(a["labels"] != -100, a["labels"], a["input_ids"])
    later = np.where(next_epoch["labels"] != -100, next_epoch["labels"], next_epoch["input_ids"])
    np.testing.assert_array_equal(originals, later)  # same text underneath
