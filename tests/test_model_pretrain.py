"""Our BERT against transformers' BERT: same weights, same outputs; heads and attention paths agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertflow.bert_core.pretrain.attention import _padded_attend, attend
from bertflow.bert_core.pretrain.batch import pack_batch
from bertflow.bert_core.pretrain.export import export_model
from bertflow.bert_core.pretrain.hf_compat import from_hf_state_dict, read_hf_dir, to_hf_state_dict
from bertflow.bert_core.pretrain.model import BertForPretraining, ModelConfig
from bertflow.bert_core.pretrain.synthetic import write_tokenizer

VOCAB = 120


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(with_nsp: bool, pre_ln: bool = False, vocab: int = VOCAB) -> BertForPretraining:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                      max_position_embeddings=40, with_nsp=with_nsp, pre_ln=pre_ln)
    model = BertForPretraining(cfg)
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ragged_batch(seed: int = 0, lengths=(24, 17, 9, 24), width: int = 24, nsp: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths)
    attn = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, VOCAB, size=(len(lengths), width)) * attn
    ids[:, 0] = 2
    types = (np.arange(width)[None, :] >= lengths[:, None] // 2).astype(np.int64) * attn
    labels = np.where((rng.random(ids.shape) < 0.2) & (attn == 1), ids, -100)
    labels[:, 1] = ids[:, 1]  # at least one target per row
    batch = {"input_ids": ids, "attention_mask": attn, "token_type_ids": types, "labels": labels}
    if nsp:
        batch["next_sentence_label"] = rng.integers(0, 2, size=len(lengths))
    return batch


def hf_inputs(batch):
    return {k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.parametrize("with_nsp", [True, False])
def test_export_loads_in_transformers_with_same_outputs(tmp_path, with_nsp):
    from transformers import AutoModelForSequenceClassification, BertForMaskedLM, BertForPreTraining

    model = tiny(with_nsp)
    tok = write_tokenizer(tmp_path / "tok", VOCAB)
    info = export_model(model.state_dict(), model.cfg, tok, tmp_path / "export", {"step": 0})
    cls = BertForPreTraining if with_nsp else BertForMaskedLM
    assert info["architecture"] == cls.__name__
    hf, loading = cls.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"] and not loading["mismatched_keys"]
    assert (tmp_path / "export" / "vocab.txt").read_text() == (tok / "vocab.txt").read_text()

    batch = ragged_batch(nsp=with_nsp)
    packed = pack_batch(batch)
    with torch.no_grad():
        theirs = hf.eval()(**hf_inputs(batch))
        hidden = model.encode(packed)
        ours = model.mlm_logits(hidden)
    real = torch.from_numpy(batch["attention_mask"]).bool()
    ref = theirs.prediction_logits if with_nsp else theirs.logits
    torch.testing.assert_close(ours, ref[real], rtol=1e-5, atol=1e-5)
    if with_nsp:
        torch.testing.assert_close(model.nsp_logits(hidden, packed), theirs.seq_relationship_logits,
                                   rtol=1e-5, atol=1e-5)
    # fine-tuning builds on the export: only the new classifier (and, without NSP, the untrained pooler) is missing
    _, loading = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", num_labels=3,
                                                                    output_loading_info=True)
    fresh = {"classifier.weight", "classifier.bias"} | (set() if with_nsp else {"bert.pooler.dense.weight",
                                                                                 "bert.pooler.dense.bias"})
    assert loading["missing_keys"] == fresh


def test_hf_names_round_trip():
    state = tiny(with_nsp=True).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(state))
    assert back.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(back[k], state[k], rtol=0, atol=0)


def test_reads_a_real_pretrained_bert_and_matches_its_encoder(minilm_dir):
    """MiniLM is saved as a BertModel (no ``bert.`` prefix, no heads): encoder weights map, heads start fresh."""
    from transformers import BertModel

    shape, state = read_hf_dir(minilm_dir)
    assert shape["hidden_size"] == 384 and shape["num_layers"] == 6
    model = BertForPretraining(ModelConfig(**shape)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert all(k.startswith("mlm_head.") for k in missing) and missing
    assert all(k.startswith("nsp_head.") for k in unexpected)  # the pooler, unused without NSP
    hf = BertModel.from_pretrained(minilm_dir).eval()
    ids = np.array([[101, 7592, 2088, 2003, 1037, 3231, 102, 0], [101, 2307, 102, 0, 0, 0, 0, 0]])
    attn = (ids != 0).astype(np.int64)
    batch = {"input_ids": ids, "attention_mask": attn, "token_type_ids": np.zeros_like(ids),
             "labels": np.full_like(ids, -100)}
    with torch.no_grad():
        ours = model.encode(pack_batch(batch))
        theirs = hf(**hf_inputs(batch)).last_hidden_state[torch.from_numpy(attn).bool()]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sparse_head_loss_and_grads_equal_dense_head():
    batch = pack_batch(ragged_batch(3), max_predictions=6)  # padded with ignored rows
    assert batch.mlm_positions.shape[0] == 4 * 6 > batch.num_masked
    sparse, dense = tiny(True).train(), tiny(True).train()
    dense.sparse_mlm = False
    for m in (sparse, dense):
        m.embeddings.drop.p = 0.0
        for block in m.layers:
            block.drop.p = 0.0
            block.attn.dropout_p = 0.0
    out_s, out_d = sparse(batch), dense(batch)
    torch.testing.assert_close(out_s["mlm_loss"], out_d["mlm_loss"], rtol=1e-6, atol=1e-6)
    assert out_s["mlm_count"] == out_d["mlm_count"] == batch.num_masked
    assert out_s["mlm_correct"] == out_d["mlm_correct"]
    out_s["loss"].backward()
    out_d["loss"].backward()
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_and_padded_attention_paths_agree():
    """Equal-length batches take the maskless (flash) path; the padded fallback must give the same."""
    batch = pack_batch(ragged_batch(1, lengths=(16, 16, 16), width=16, nsp=False))
    assert batch.dense_seqlen == 16
    qkv = torch.randn(batch.num_tokens, 3, 4, 8)
    torch.testing.assert_close(attend(qkv, batch, 0.0, True), _padded_attend(qkv, batch, 0.0), rtol=1e-5,
                               atol=1e-6)


def test_padding_never_leaks_into_real_tokens():
    """A sequence's outputs do not depend on what else is in the batch (padding is dropped)."""
    model = tiny(True)
    alone = ragged_batch(5, lengths=(9,), width=9)
    mixed = ragged_batch(5, lengths=(9, 24), width=24)
    mixed["input_ids"][0, :9] = alone["input_ids"][0]
    mixed["token_type_ids"][0, :9] = alone["token_type_ids"][0]
    with torch.no_grad():
        a = model.encode(pack_batch(alone))
        b = model.encode(pack_batch(mixed))[:9]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pre_ln_export_is_ours_only(tmp_path):
    """Pre-LN has no transformers architecture: the export says so and transformers refuses it."""
    from transformers import AutoModelForMaskedLM

    model = tiny(False, pre_ln=True)
    info = export_model(model.state_dict(), model.cfg, write_tokenizer(tmp_path / "tok", VOCAB), tmp_path / "ex", {})
    assert not info["hf_compatible"] and "pre-LN" in info["note"]
    assert json.loads((tmp_path / "ex" / "config.json").read_text())["model_type"] == "bertflow_preln"
    with pytest.raises((ValueError, KeyError)):
        AutoModelForMaskedLM.from_pretrained(tmp_path / "ex")
    shape, state = read_hf_dir(tmp_path / "ex")  # but init_from reads it back exactly
    assert shape["pre_ln"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
