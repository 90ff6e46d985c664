"""Readers, label maps, the validation split, length bucketing and NER sub-token alignment."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.finetune.batching import bucketed_batches, collate, sorted_batches
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.conll import parse_conll
from bertflow.bert_core.finetune.data import load_data
from bertflow.bert_core.finetune.encode import IGNORE, encode_texts, encode_words
from bertflow.bert_core.finetune.labels import continuation_ids, infer_label_names
from bertflow.bert_core.finetune.readers import read_examples
from bertflow.bert_core.finetune.split import split_indices
from tests.helpers import SHARED_DATA, build_tiny_bert, requires_shared_data, write_conll, write_csv

CONLL_FIXTURE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(build_tiny_bert(tmp_path_factory.mktemp("bert"))))


# ---- readers ---------------------------------------------------------------------------------------


def test_conll_parser_skips_docstart_and_splits_on_blank_lines(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text(CONLL_FIXTURE.replace("\n", "\r\n"), encoding="utf-8")  # CRLF, as some copies have
    ex = read_examples(path, "token")
    assert ex.words == [["EU", "rejects", "German", "call", "."], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
    assert ex.tags == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]


def test_conll_tag_field_and_bad_line():
    ex = parse_conll(["a NN B-X", "b NN O", ""], tag_field=1)
    assert ex.tags == [["NN", "NN"]]
    with pytest.raises(InputError, match=r"bad\.txt:2: expected 'word \.\.\. tag'"):
        parse_conll(["a NN O", "lonely", ""], source="bad.txt")


def test_csv_with_quoted_commas_and_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\r\n"one, two",a\r\n"line one\r\nline two",b\r\nplain,a\r\n')
    ex = read_examples(path, "sequence")
    assert ex.texts == ["one, two", "line one\r\nline two", "plain"]
    assert ex.labels == ["a", "b", "a"]


def test_tsv_has_no_quoting_and_integer_labels_stay_text(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\n"quoted" start \t1\nit \'s fine \t0\n', encoding="utf-8")
    ex = read_examples(path, "sequence", text_column="sentence")
    assert ex.texts == ['"quoted" start ', "it 's fine "]
    assert ex.labels == ["1", "0"]


def test_parquet_token_task_with_list_columns_and_string_columns(tmp_path):
    path = tmp_path / "ner.parquet"
    pq.write_table(pa.table({"tokens": [["a", "b"], ["c"]], "ner": [["B-X", "O"], ["O"]]}), path)
    ex = read_examples(path, "token", text_column="tokens", label_column="ner")
    assert ex.words == [["a", "b"], ["c"]] and ex.tags == [["B-X", "O"], ["O"]]
    path2 = tmp_path / "ner2.parquet"
    pq.write_table(pa.table({"text": ["a b", "c"], "label": ["B-X O", "O O"]}), path2)
    with pytest.raises(InputError, match="row 1 has 1 words .* but 2 tags"):
        read_examples(path2, "token")


def test_sentence_pairs_are_read(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["q", "a", "y"], [("is it", "yes it is", "1"), ("no", "maybe", "0")])
    ex = read_examples(path, "sequence", text_column="q", label_column="y", text_pair_column="a")
    assert ex.pairs == ["yes it is", "maybe"]


def test_missing_column_names_it_and_lists_available(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["sentence", "label"], [("x", "a")])
    with pytest.raises(InputError, match=r"no column 'text'; available columns: 'sentence', 'label'"):
        read_examples(path, "sequence")
    pq.write_table(pa.table({"body": ["x"], "label": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"no column 'text'; available columns: 'body', 'label'"):
        read_examples(tmp_path / "t.parquet", "sequence")


def test_a_column_named_twice_is_refused_not_picked(tmp_path):
    (tmp_path / "t.csv").write_text("text,label,text\nfirst,a,second\n")
    with pytest.raises(InputError, match=r"t.csv has 2 columns named 'text'"):
        read_examples(tmp_path / "t.csv", "sequence")
    pq.write_table(pa.Table.from_arrays([pa.array(["x"]), pa.array(["a"]), pa.array(["b"])],
                                        names=["text", "label", "label"]), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet has 2 columns named 'label'"):
        read_examples(tmp_path / "t.parquet", "sequence")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="training file .*nope.csv not found"):
        read_examples(tmp_path / "nope.csv", "sequence")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(InputError, match="cannot tell the format"):
        read_examples(tmp_path / "data.json", "sequence")


def test_conll_file_for_sequence_task_is_refused(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(CONLL_FIXTURE)
    with pytest.raises(InputError, match="task: token"):
        read_examples(path, "sequence")


def test_empty_label_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nx,a\ny,\n")
    with pytest.raises(InputError, match="label column 'label' is empty at row 1"):
        read_examples(path, "sequence")


# ---- label maps, split -----------------------------------------------------------------------------


def test_label_names_sorted_numerically_when_integers():
    assert infer_label_names(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert infer_label_names(["b", "a", "B-PER", "O"]) == ["B-PER", "O", "a", "b"]


def test_unseen_validation_label_is_a_clear_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [("x", "a"), ("y", "b")])
    valid = write_csv(tmp_path / "valid.csv", ["text", "label"], [("z", "a"), ("w", "surprise")])
    cfg = FinetuneConfig(train_path=str(train), valid_path=str(valid))
    with pytest.raises(InputError, match=r"validation file .*valid.csv: label 'surprise' .* 'a', 'b'"):
        load_data(cfg)


def test_unseen_validation_tag_is_a_clear_error(tmp_path):
    train = write_conll(tmp_path / "train.txt", [(["a", "b"], ["B-PER", "O"])])
    valid = write_conll(tmp_path / "valid.txt", [(["c"], ["B-ORG"])])
    with pytest.raises(InputError, match="label 'B-ORG'"):
        load_data(FinetuneConfig(task="token", train_path=str(train), valid_path=str(valid)))


def test_split_is_seeded_stratified_and_keeps_every_label_in_training():
    labels = ["a"] * 500 + ["b"] * 100 + ["c"] * 3 + ["d"]
    tr, va = split_indices(len(labels), 0.2, seed=7, strata=labels)
    tr2, va2 = split_indices(len(labels), 0.2, seed=7, strata=labels)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, split_indices(len(labels), 0.2, seed=8, strata=labels)[1])
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    counts = Counter(labels[i] for i in va)
    assert counts["a"] == 100 and counts["b"] == 20 and counts["c"] == 1 and counts["d"] == 0
    assert {labels[i] for i in tr} == {"a", "b", "c", "d"}


def test_unstratified_split_fraction():
    tr, va = split_indices(1000, 0.1, seed=0)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)


# ---- batching --------------------------------------------------------------------------------------


def test_bucketed_batches_cover_everything_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=2000)
    batches = bucketed_batches(lengths, 16, np.random.default_rng(1), bucket_batches=20)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(2000))
    assert max(len(b) for b in batches) == 16
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(2000), 125)
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.75 * padded_random  # bucketing cuts padding
    again = bucketed_batches(lengths, 16, np.random.default_rng(2), bucket_batches=20)
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]  # the order is shuffled per seed


def test_sorted_batches_and_collate_pad_dynamically(tiny_tokenizer):
    enc = encode_texts(tiny_tokenizer, ["the cat", "the cat sat on the mat", "dog"], None, [0, 1, 0], 64)
    batches = sorted_batches(enc.lengths, 2)
    assert batches[0].tolist() == [1, 0]
    batch = collate(enc, batches[0], pad_id=0)
    assert batch["input_ids"].shape == (2, enc.lengths.max())
    assert batch["attention_mask"].sum().item() == enc.lengths[[1, 0]].sum()
    assert batch["labels"].tolist() == [1, 0]
    assert collate(enc, np.array([2]), 0, pad_to_multiple=8)["input_ids"].shape == (1, 8)


# ---- NER alignment ---------------------------------------------------------------------------------


def test_ner_labels_only_the_first_piece_of_each_word(tiny_tokenizer):
    words = [["zanderbrook", "sat", "in", "quixotlan"]]
    assert len(tiny_tokenizer.tokenize("zanderbrook")) > 2  # the point of this test: words in several pieces
    enc = encode_words(tiny_tokenizer, words, [np.array([3, 0, 0, 1])], 64)
    ids, labels, starts = enc.input_ids[0], enc.labels[0], enc.word_starts[0]
    pieces = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert [labels[p] for p in starts] == [3, 0, 0, 1]
    assert sum(x != IGNORE for x in labels) == 4  # everything else ignored: continuation pieces and specials
    for w, p in enumerate(starts):
        assert not pieces[p].startswith("##")
        assert "".join(x.removeprefix("##") for x in pieces[p : (starts[w + 1] if w + 1 < 4 else -1)]) == words[0][w]


def test_ner_all_pieces_labelled_b_continues_as_i(tiny_tokenizer):
    names = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    cont = continuation_ids(names, "all")
    assert cont == [2, 3, 2, 3, 4] and continuation_ids(names, "first") is None
    words = [["zanderbrook", "sat", "in", "quixotlan"]]
    tags = np.array([1, 4, 4, 0])  # B-PER O O B-LOC
    enc = encode_words(tiny_tokenizer, words, [tags], 64, cont)
    labels, starts = enc.labels[0], enc.word_starts[0]
    assert [labels[p] for p in starts] == list(tags)  # first pieces as before
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], [SEP]
    bounds = list(starts) + [len(labels) - 1]
    for w in range(4):
        rest = labels[bounds[w] + 1: bounds[w + 1]]
        assert rest == [cont[tags[w]]] * len(rest)  # later pieces: B-PER -> I-PER, O -> O, B-LOC -> I-LOC
    assert len(labels[bounds[0] + 1: bounds[1]]) >= 2  # zanderbrook really is several pieces
    assert continuation_ids(["B-MISC", "O"], "all") == [-100, 1]  # no I-MISC to continue with: unlabelled
    with pytest.raises(InputError, match="E-PER.*label_pieces: first"):
        continuation_ids(["B-PER", "E-PER", "I-PER", "O", "S-PER"], "all")


def test_ner_truncated_words_are_marked_missing(tiny_tokenizer):
    enc = encode_words(tiny_tokenizer, [["zanderbrook"] * 10], [np.zeros(10, dtype=int)], 12)
    assert len(enc.input_ids[0]) == 12
    assert (enc.word_starts[0] == -1).sum() > 0 and enc.word_starts[0][0] == 1


# ---- the shared data sets' real formats (a few hundred rows) ------------------------------------------


@requires_shared_data
def test_reads_sst2_tsv():
    ex = read_examples(SHARED_DATA / "sst2" / "train.tsv", "sequence", text_column="sentence")
    assert len(ex) == 67349
    assert set(ex.labels) == {"0", "1"}
    assert ex.texts[0] == "hide new secretions from the parental units "


@requires_shared_data
def test_reads_banking77_csv_with_embedded_newlines():
    ex = read_examples(SHARED_DATA / "banking77" / "train.csv", "sequence", label_column="category")
    assert len(ex) == 10003  # raw line count is higher: 10 texts hold a quoted newline
    assert sum("\n" in t for t in ex.texts) == 10
    categories = json.loads((SHARED_DATA / "banking77" / "categories.json").read_text())
    assert infer_label_names(ex.labels) == sorted(categories)


@requires_shared_data
def test_reads_conll2003():
    ex = read_examples(SHARED_DATA / "conll2003" / "valid.txt", "token")
    assert len(ex) == 3250 and sum(len(w) for w in ex.words) == 51362
    assert Counter(t for s in ex.tags for t in s)["B-PER"] == 1842
