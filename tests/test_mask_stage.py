"""Masked-data generation end to end: recipes, masking statistics, round trips, determinism, bad input.

The corpus is synthetic (random made-up words, so any run of a few tokens pins down one
place in the corpus) and written with pyarrow in the corpus format; the tokenizer is a
small WordPiece trained on it. Sequences are traced back to the corpus by looking up
their first tokens in an n-gram index of an independent tokenization of every document.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.documents import write_corpus
from bertflow.bert_core.ingest.reader import open_corpus
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.sentences import sentence_starts
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.mask.masking import word_start_table
from bertflow.bert_core.mask.stage import run
from bertflow.bert_core.stageio import write_manifest
from tests.helpers import BOOKS, synthetic_documents, train_wordpiece

K = 6  # n-gram length used to locate a segment in the corpus
SHARD_BYTES = 200_000  # the 480 kB synthetic corpus in three shards


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask")
    docs = synthetic_documents(500, seed=0)
    tok_dir = train_wordpiece(root / "tok", docs, vocab_size=700)
    corpus = write_corpus(root / "corpus", docs, shard_max_bytes=SHARD_BYTES)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ref = [np.asarray(e.ids) for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
    specials = {name: tokenizer.token_to_id(t) for name, t in
                [("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")]}
    return {"root": root, "docs": docs, "tok": tok_dir, "corpus": corpus, "tokenizer": tokenizer, "ref": ref,
            "sp": specials}


def generate(setup, name: str, **overrides) -> tuple[Path, object]:
    out = setup["root"] / name
    cfg = MaskConfig(**{"num_workers": 1, **overrides})
    return out, run(cfg, setup["corpus"], setup["tok"], out)


def read_rows(out: Path) -> dict[str, list]:
    manifest = json.loads((out / "manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(out / s["file"]) for s in manifest["shards"]])
    return table.to_pydict()


def restore(rows: dict[str, list]) -> list[list[int]]:
    """Static rows with their original ids put back at the masked positions."""
    out = []
    for ids, pos, orig in zip(rows["input_ids"], rows["masked_positions"], rows["masked_ids"]):
        ids = list(ids)
        for p, o in zip(pos, orig):
            ids[p] = o
        out.append(ids)
    return out


class Locator:
    """Where a token sequence occurs in a list of token arrays (via an index of K-grams)."""

    def __init__(self, seqs: list[np.ndarray]):
        self.seqs = [np.asarray(s) for s in seqs]
        self.index: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for d, s in enumerate(self.seqs):
            lst = s.tolist()
            for i in range(len(lst) - K + 1):
                self.index[tuple(lst[i:i + K])].append((d, i))

    def find(self, seg) -> list[tuple[int, int]] | None:
        """All ``(seq, pos)`` where ``seg`` occurs, or None when ``seg`` is too short to look up."""
        seg = list(seg)
        if len(seg) < K:
            return None
        return [(d, i) for d, i in self.index.get(tuple(seg[:K]), [])
                if self.seqs[d][i:i + len(seg)].tolist() == seg]


def unit_streams(setup) -> list[np.ndarray]:
    """The full_sentences stream of each unit (= corpus shard here): documents joined by [SEP]."""
    sep = setup["sp"]["sep"]
    out, first = [], 0
    for shard in open_corpus(setup["corpus"]).shards:
        parts = []
        for d in setup["ref"][first:first + shard.rows]:
            parts += [d, [sep]]
        out.append(np.concatenate(parts[:-1]).astype(np.int64))
        first += shard.rows
    return out


# ---------------------------------------------------------------- full recipe


def test_full_rows_tile_the_corpus_and_decode_back_to_the_text(setup):
    out, result = generate(setup, "full-tokens", recipe="full", full_packing="tokens", masking="dynamic",
                           max_seq_length=64)
    rows = read_rows(out)
    sp, cap = setup["sp"], 62
    streams = unit_streams(setup)
    locate = Locator(streams)
    placed = defaultdict(list)
    for ids in rows["input_ids"]:
        assert ids[0] == sp["cls"] and ids[-1] == sp["sep"] and len(ids) <= 64
        content = ids[1:-1]
        hits = locate.find(content)
        assert hits is not None and len(hits) == 1, "every row is one contiguous piece of the corpus"
        placed[hits[0][0]].append((hits[0][1], len(content)))
    for u, stream in enumerate(streams):
        pieces = sorted(placed[u])
        assert [p for p, _ in pieces] == list(range(0, len(stream), cap))  # rows tile the stream, in full rows
        assert sum(n for _, n in pieces) == len(stream)
    # decoding the reassembled streams gives back the documents' text (modulo the normaliser and spacing)
    normalize = setup["tokenizer"].normalizer.normalize_str
    decoded_docs = []
    for stream in streams:
        cut = np.flatnonzero(stream == sp["sep"])
        decoded_docs += [setup["tokenizer"].decode(d.tolist()) for d in np.split(stream, cut)]
        decoded_docs[-len(cut) - 1:] = [d.replace("[SEP]", "") for d in decoded_docs[-len(cut) - 1:]]
    assert len(decoded_docs) == len(setup["docs"])
    for text, decoded in zip(setup["docs"], decoded_docs):
        assert "".join(decoded.split()) == "".join(normalize(text).split())
    assert result.metrics["sequences"] == len(rows["input_ids"]) and result.metrics["docs_skipped"] == 0
    assert set(rows) == {"input_ids", "token_type_ids"}  # dynamic: no masks stored
    assert all(set(t) == {0} for t in rows["token_type_ids"])


def test_doc_sentences_rows_are_whole_sentences_packed_greedily(setup):
    out, _ = generate(setup, "full-docsent", recipe="full", full_mode="doc_sentences", full_packing="sentences",
                      masking="dynamic", max_seq_length=64)
    rows = read_rows(out)
    sp, cap = setup["sp"], 62
    tokenizer = setup["tokenizer"]
    bounds = []  # token offsets of sentence boundaries per document, from tokenizing each sentence alone
    for text in setup["docs"]:
        starts = [*sentence_starts(text), len(text)]
        lengths = [len(e.ids) for e in tokenizer.encode_batch([text[a:b] for a, b in zip(starts, starts[1:])],
                                                              add_special_tokens=False)]
        bounds.append(np.concatenate([[0], np.cumsum(lengths)]))
    locate = Locator(setup["ref"])
    per_doc = defaultdict(list)
    unlocated = 0
    for ids in rows["input_ids"]:
        content = ids[1:-1]
        assert sp["sep"] not in content  # doc_sentences never crosses a document boundary
        hits = locate.find(content)
        if not hits:
            unlocated += 1  # shorter than K tokens
            continue
        (d, pos), = hits
        per_doc[d].append((pos, pos + len(content)))
    assert unlocated < 0.05 * len(rows["input_ids"])
    for d, spans in per_doc.items():
        b = set(bounds[d].tolist())
        spans.sort()
        for (s, e), nxt in zip(spans, spans[1:] + [None]):
            assert s in b and e in b, "rows start and end at sentence boundaries"
            if nxt is not None and nxt[0] == e:  # the next sentence did not fit
                next_end = min(x for x in b if x > e)
                assert (e - s) + (next_end - e) > cap


def test_static_masks_follow_the_statistics_and_restore_to_the_dynamic_rows(setup):
    kw = dict(recipe="full", max_seq_length=64, max_predictions_per_seq=64)
    static_out, result = generate(setup, "full-static", **kw)
    dynamic_out, _ = generate(setup, "full-dynamic", masking="dynamic", **kw)
    rows = read_rows(static_out)
    sp = setup["sp"]
    special = set(sp.values())
    originals = restore(rows)
    assert originals == read_rows(dynamic_out)["input_ids"]  # same rows, same order; masks on top
    candidates = selected = to_mask = unchanged = randomised = 0
    for ids, orig, pos in zip(rows["input_ids"], originals, rows["masked_positions"]):
        assert list(pos) == sorted(set(pos)) and len(pos) <= 64
        assert not any(orig[p] in special for p in pos)
        candidates += sum(t not in special for t in orig)
        selected += len(pos)
        for p in pos:
            to_mask += ids[p] == sp["mask"]
            unchanged += ids[p] == orig[p]
            randomised += ids[p] != sp["mask"] and ids[p] != orig[p]
        assert all(ids[i] == orig[i] for i in set(range(len(ids))) - set(pos))
    # rate = selected / non-special tokens; the cap (64) is above every row's target (0.15 * 62)
    assert candidates > 100_000
    assert abs(selected / candidates - 0.15) < 0.005
    assert abs(to_mask / selected - 0.8) < 0.01
    assert abs(unchanged / selected - 0.1) < 0.01
    assert abs(randomised / selected - 0.1) < 0.01
    assert result.metrics["masked_tokens"] == selected


def test_whole_word_masking_in_generated_data_never_splits_a_word(setup):
    out, _ = generate(setup, "full-wwm", recipe="full", max_seq_length=64, whole_word=True)
    rows = read_rows(out)
    starts = word_start_table(setup["tokenizer"].get_vocab(), setup["tokenizer"].get_vocab_size())
    special = set(setup["sp"].values())
    checked = 0
    for orig, pos in zip(restore(rows), rows["masked_positions"]):
        chosen = set(pos)
        for i in range(2, len(orig) - 1):
            if not starts[orig[i]] and orig[i - 1] not in special:  # piece i continues the word of piece i-1
                assert (i in chosen) == (i - 1 in chosen)
                checked += 1
    assert checked > 10_000
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["continuation_ids"]) == set(np.flatnonzero(~starts).tolist())


def test_dupe_factor_writes_copies_with_different_masks(setup):
    one, _ = generate(setup, "dupe1", recipe="full", max_seq_length=64, full_packing="tokens")
    three, result = generate(setup, "dupe3", recipe="full", max_seq_length=64, full_packing="tokens", dupe_factor=3)
    base = [tuple(r) for r in restore(read_rows(one))]
    rows3 = read_rows(three)
    copies = defaultdict(list)
    for orig, pos in zip(restore(rows3), rows3["masked_positions"]):
        copies[tuple(orig)].append(tuple(pos))
    assert sorted(copies) == sorted(base) and all(len(v) == 3 for v in copies.values())
    assert sum(len(set(v)) == 3 for v in copies.values()) > 0.9 * len(copies)  # masks differ between copies
    # copies are spread over the whole output, not kept next to each other
    first_half = [tuple(r) for r in restore(rows3)][: len(base) * 3 // 2]
    assert len(set(first_half)) > 0.6 * len(base)
    assert result.metrics["sequences"] == 3 * len(base)


# ---------------------------------------------------------------- nsp recipe


def test_nsp_pairs_labels_and_sources(setup):
    max_len = 24
    out, result = generate(setup, "nsp", recipe="nsp", max_seq_length=max_len, dupe_factor=4, seed=7)
    rows = read_rows(out)
    sp = setup["sp"]
    labels = rows["next_sentence_label"]
    assert len(labels) >= 20_000
    assert abs(np.mean(labels) - 0.5) < 0.01
    assert result.metrics["random_next_rate"] == pytest.approx(np.mean(labels))
    locate = Locator(setup["ref"])
    checked = {0: 0, 1: 0}
    adjacent = 0
    for ids, types, label in zip(restore(rows), rows["token_type_ids"], labels):
        assert len(ids) <= max_len and ids[0] == sp["cls"] and ids[-1] == sp["sep"]
        sep1 = ids.index(sp["sep"])
        a, b = ids[1:sep1], ids[sep1 + 1:-1]
        assert a and b and sp["sep"] not in b
        assert types == [0] * (sep1 + 1) + [1] * (len(b) + 1)
        ha, hb = locate.find(a), locate.find(b)
        if not ha or not hb or len(ha) != 1 or len(hb) != 1:
            continue
        (da, pa_), (db, pb) = ha[0], hb[0]
        checked[label] += 1
        if label == 1:
            assert da != db, "a random next segment comes from another document"
        else:
            assert da == db and pb >= pa_ + len(a), "a true next segment follows A in the same document"
            if len(a) + len(b) < max_len - 3:  # not truncated: B starts right where A ends
                assert pb == pa_ + len(a)
                adjacent += 1
    assert checked[0] > 2000 and checked[1] > 2000 and adjacent > 200


def test_nsp_skips_documents_without_sentence_boundaries(setup, tmp_path):
    docs = setup["docs"][:30] + ["one sentence without any end mark", "x"]
    corpus = write_corpus(tmp_path / "corpus", docs)
    res = run(MaskConfig(recipe="nsp", num_workers=1), corpus, setup["tok"], tmp_path / "out")
    assert res.metrics["docs_skipped"] == 2
    assert res.details["counts"]["docs_skipped_sentences"] == 1 and res.details["counts"]["docs_skipped_short"] == 1


# ---------------------------------------------------------------- determinism and format


def test_same_seed_same_bytes_for_one_and_two_workers(setup):
    kw = dict(recipe="nsp", max_seq_length=32, unit_mb=0.1, rows_per_shard=1500, row_group_rows=256, dupe_factor=2)
    one, r1 = generate(setup, "det-1", num_workers=1, **kw)
    two, r2 = generate(setup, "det-2", num_workers=2, **kw)
    other, _ = generate(setup, "det-other-seed", seed=99, **kw)
    files = sorted(p.name for p in one.glob("shard-*.parquet"))
    assert len(files) >= 3 and r1.details["counts"]["work_units"] >= 4
    assert files == sorted(p.name for p in two.glob("shard-*.parquet"))
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes()
    assert (one / files[0]).read_bytes() != (other / files[0]).read_bytes()
    assert r1.metrics["sequences"] == r2.metrics["sequences"]


def test_output_format_and_manifest(setup):
    out, result = generate(setup, "format", recipe="nsp", max_seq_length=32, rows_per_shard=2000, row_group_rows=500)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not (out / ".parts").exists()
    assert manifest["stage"] == "mask" and manifest["recipe"] == "nsp" and manifest["masking"] == "static"
    assert manifest["tokenizer_fingerprint"] == hashlib.sha256((setup["tok"] / "vocab.txt").read_bytes()).hexdigest()
    corpus_manifest = json.loads((setup["corpus"] / "manifest.json").read_text())
    assert manifest["corpus_fingerprint"] == corpus_manifest["corpus_fingerprint"]
    assert manifest["special_ids"] == setup["sp"] and manifest["vocab_size"] == 700
    assert manifest["config"]["seed"] == manifest["seed"] == 12345
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["num_rows"] == result.metrics["sequences"]
    tokens = 0
    for s in manifest["shards"]:
        pf = pq.ParquetFile(out / s["file"])
        schema = pf.schema_arrow
        assert schema.field("input_ids").type.value_type == pa.uint16()
        assert schema.field("masked_ids").type.value_type == pa.uint16()
        assert schema.field("masked_positions").type.value_type == pa.uint16()
        assert schema.field("token_type_ids").type.value_type == pa.uint8()
        assert schema.field("next_sentence_label").type == pa.int8()
        assert pf.metadata.num_rows == s["rows"]
        assert max(pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)) == 500
        tokens += sum(len(r) for r in pf.read(columns=["input_ids"]).column(0).to_pylist())
    assert tokens == manifest["num_tokens"] == result.metrics["tokens"]
    for key in ("sequences", "tokens", "masked_tokens", "shards", "docs_skipped", "tokens_per_s"):
        assert key in result.metrics
    assert result.stage == "mask" and result.metrics["shards"] == len(manifest["shards"]) >= 2


# ---------------------------------------------------------------- bad input


def make_tokenizer_without(setup, tmp_path, token: str) -> Path:
    texts = setup["docs"][:50]
    specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t != token]
    return train_wordpiece(tmp_path / "tok-no", texts, vocab_size=300, specials=specials)


def test_tokenizer_without_a_special_token_is_named(setup, tmp_path):
    tok = make_tokenizer_without(setup, tmp_path, "[MASK]")
    with pytest.raises(InputError, match=r"\[MASK\]"):
        run(MaskConfig(num_workers=1), setup["corpus"], tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["tokenizer.json", "vocab.txt"])
def test_tokenizer_dir_missing_a_file_is_named(setup, tmp_path, missing):
    tok = tmp_path / "tok"
    shutil.copytree(setup["tok"], tok)
    (tok / missing).unlink()
    with pytest.raises(InputError, match=missing.replace(".", r"\.")):
        run(MaskConfig(num_workers=1), setup["corpus"], tok, tmp_path / "out")


def test_vocab_txt_from_another_tokenizer_is_refused(setup, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(setup["tok"], tok)
    (tok / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n")
    with pytest.raises(InputError, match="different tokenizers"):
        run(MaskConfig(num_workers=1), setup["corpus"], tok, tmp_path / "out")


def test_a_directory_that_is_not_a_corpus_is_refused(setup, tmp_path):
    with pytest.raises(InputError, match="manifest.json"):
        run(MaskConfig(num_workers=1), setup["tok"], setup["tok"], tmp_path / "out")  # the tokenizer dir
    masked, _ = generate(setup, "not-a-corpus", recipe="full", max_seq_length=32)
    with pytest.raises(InputError, match="not an ingest output .*stage='mask'"):
        run(MaskConfig(num_workers=1), masked, setup["tok"], tmp_path / "out")
    write_manifest(masked, {"stage": "ingest"})
    with pytest.raises(InputError, match="corpus_fingerprint"):
        run(MaskConfig(num_workers=1), masked, setup["tok"], tmp_path / "out")
    write_manifest(masked, {"stage": "ingest", "corpus_fingerprint": "f", "shards": [{"name": "shard-00000.parquet"}]})
    with pytest.raises(InputError, match="'doc_id'"):  # masked data: shards, but not corpus shards
        run(MaskConfig(num_workers=1), masked, setup["tok"], tmp_path / "out")
    with pytest.raises(InputError, match="does not exist"):
        run(MaskConfig(num_workers=1), tmp_path / "nowhere", setup["tok"], tmp_path / "out")


def test_a_missing_corpus_shard_is_named(setup, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(setup["corpus"], corpus)
    (corpus / "shard-00001.parquet").unlink()
    with pytest.raises(InputError, match="shard-00001.parquet"):
        run(MaskConfig(num_workers=1), corpus, setup["tok"], tmp_path / "out")


def test_short_documents_are_counted_and_all_bad_input_is_an_error(setup, tmp_path):
    docs = setup["docs"][:20] + ["", "a", " . "]
    corpus = write_corpus(tmp_path / "corpus", docs)
    res = run(MaskConfig(num_workers=1), corpus, setup["tok"], tmp_path / "out")
    assert res.metrics["docs_skipped"] == 3 and res.metrics["sequences"] > 0
    only_bad = write_corpus(tmp_path / "bad", ["", "a", "b"])
    with pytest.raises(InputError, match="no sequences"):
        run(MaskConfig(num_workers=1), only_bad, setup["tok"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # never an empty output
    with pytest.raises(InputError, match="fewer than 2 sentences"):
        run(MaskConfig(recipe="nsp", num_workers=1), write_corpus(tmp_path / "bad2", ["no sentence end here"] * 3),
            setup["tok"], tmp_path / "out3")


def test_bad_sentence_offsets_name_the_document(setup, tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    table = pa.table({"doc_id": ["good", "bad"], "source": ["s", "s"], "text": ["Ab cd. Ef gh.", "Ij kl. Mn op."],
                      "n_chars": [13, 13], "sent_starts": [[0, 7], [0, 40]]}, schema=CORPUS_SCHEMA)
    pq.write_table(table, d / "shard-00000.parquet")
    write_manifest(d, {"stage": "ingest", "corpus_fingerprint": "f", "shards": [{"name": "shard-00000.parquet"}]})
    with pytest.raises(InputError, match="document bad"):
        run(MaskConfig(num_workers=1), d, setup["tok"], tmp_path / "out")


def test_a_failed_run_leaves_the_previous_output_intact(setup, tmp_path):
    out = tmp_path / "out"
    run(MaskConfig(num_workers=1, max_seq_length=32), setup["corpus"], setup["tok"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError):
        run(MaskConfig(num_workers=1), write_corpus(tmp_path / "bad", ["", "a"]), setup["tok"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_config_rejects_dupes_with_dynamic_masking():
    from bertflow.bert_core.errors import ConfigError

    with pytest.raises(ConfigError, match="dupe_factor"):
        MaskConfig(masking="dynamic", dupe_factor=2)


# ---------------------------------------------------------------- with the real ingestion stage


def test_reads_the_ingestion_stages_output(setup, tmp_path):
    from bertflow.bert_core.ingest import stage as ingest
    from bertflow.bert_core.ingest.config import IngestConfig

    corpus = tmp_path / "corpus"
    ingest.run(IngestConfig(inputs=(str(BOOKS / "*.txt.gz"),), workers=1), corpus)
    res = run(MaskConfig(recipe="nsp", num_workers=1), corpus, setup["tok"], tmp_path / "out")
    assert res.metrics["sequences"] > 100 and res.metrics["docs_skipped"] == 0
    assert 0.4 < res.metrics["random_next_rate"] < 0.6
