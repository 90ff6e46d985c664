"""Document tokenization for masked-data generation: both paths agree with the tokenizer; sentences map to tokens."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertflow.bert_core.ingest.sentences import sentence_starts
from bertflow.bert_core.mask.encode import DocumentEncoder
from bertflow.bert_core.mask.tokenizer import load_tokenizer
from tests.helpers import BOOKS

TRICKY = [
    "Hello\x0bWorld\x0cagain\x01x \x7f",  # controls the normalizer deletes (joining words)
    "Literal [CLS] and [MASK] and [sep] in text.",  # added tokens match the raw text
    "ΟΔΟΣ ΣΑΣ — “quoted”",  # Python lower-cases a final sigma to ς, the tokenizer to σ
    "‘single’ … naïve café Ångström ﬁne İstanbul",  # accents, ligatures, casing that changes length
    "“Hello,” she said—‘quietly’… «Bien» ¿no? ¡sí! x·y ﬁ",  # Unicode punctuation, split off like ASCII
    "a" * 150 + " " + "b" * 99 + " pneumonoultramicroscopicsilicovolcanoconiosis",  # over-long words are [UNK]
    "中文字符 mixed with English; tabs\tand\r\nnewlines\u00a0nbsp\u2028ls",
    "soft\u00adhyphen zero\u200bwidth e\u0301 combining",
    "",
    "   ",
    "word",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_tokenizer(minilm_dir)


@pytest.fixture(scope="module")
def books() -> list[str]:
    out = []
    for path in sorted(BOOKS.glob("*.txt.gz"))[:3]:
        out.append(gzip.decompress(path.read_bytes()).decode("utf-8-sig", errors="replace")[:60_000])
    return out


def reference(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_fast_path_matches_the_tokenizer_on_books_and_tricky_text(minilm, books):
    tokenizer, info = minilm
    texts = books + TRICKY
    enc = DocumentEncoder(tokenizer, info, piece_chars=300)  # many pieces: cuts are exercised too
    assert enc.words is not None  # the word cache is on for a BertNormalizer tokenizer
    got = enc.encode(texts)
    for d, text in enumerate(texts):
        assert got.ids[got.doc_offsets[d]:got.doc_offsets[d + 1]].tolist() == reference(tokenizer, text), d


@pytest.fixture(scope="module")
def small_piece_encoder(minilm):
    return DocumentEncoder(*minilm, piece_chars=64)


# mostly what the fast path takes (ASCII, quotes, dashes), spiked with what it must refuse
_PIECES = [*"abcXYZ019 .,;!?'\"-()[]#", "CLS", "[MASK]", "\t", "\n", "\r", "\x0b", "\x01", "é", "É", "“", "—", "Σ",
           "ﬁ", "\u00a0", "\u00ad", "中", "e\u0301", "İ", "ß", "Ǆ"]
_NEAR_ASCII = st.lists(st.sampled_from(_PIECES), max_size=150).map("".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=300), _NEAR_ASCII), min_size=1, max_size=4))
def test_fast_path_matches_the_tokenizer_on_any_text(minilm, small_piece_encoder, texts):
    tokenizer, _ = minilm
    got = small_piece_encoder.encode(texts)
    for d, text in enumerate(texts):
        assert got.ids[got.doc_offsets[d]:got.doc_offsets[d + 1]].tolist() == reference(tokenizer, text)


def test_sentence_offsets_are_the_tokens_of_each_sentence(minilm, books):
    tokenizer, info = minilm
    texts = books + ["  Leading space. Then more!  And\x01 more?", "One sentence only"]
    starts = [np.asarray(sentence_starts(t), dtype=np.int64) for t in texts]
    enc = DocumentEncoder(tokenizer, info, piece_chars=500).encode(texts, starts)
    assert len(enc.sent_starts) == sum(len(s) for s in starts) > 300
    for d, text in enumerate(texts):
        bounds = [*starts[d].tolist(), len(text)]
        for j in range(len(starts[d])):
            k = enc.doc_sent_offsets[d] + j
            sentence = enc.ids[enc.sent_starts[k]:enc.sent_ends[k]].tolist()
            assert sentence == reference(tokenizer, text[bounds[j]:bounds[j + 1]]), (d, j)
    # sentences tile their document
    for d in range(len(texts)):
        a, b = enc.doc_sent_offsets[d], enc.doc_sent_offsets[d + 1]
        assert enc.sent_starts[a] == enc.doc_offsets[d] and enc.sent_ends[b - 1] == enc.doc_offsets[d + 1]
        assert np.array_equal(enc.sent_starts[a + 1:b], enc.sent_ends[a:b - 1])


def test_word_cache_and_tokenizer_paths_give_the_same_sentences(minilm, books):
    tokenizer, info = minilm
    texts = books + TRICKY
    starts = [np.asarray(sentence_starts(t), dtype=np.int64) for t in texts]
    fast = DocumentEncoder(tokenizer, info, piece_chars=400).encode(texts, starts)
    slow = DocumentEncoder(tokenizer, info, piece_chars=400, fast_path=False).encode(texts, starts)
    for name in ("ids", "doc_offsets", "sent_starts", "sent_ends", "doc_sent_offsets"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name


def test_sentence_starts_inside_words_leave_the_tokens_alone(minilm):
    tokenizer, info = minilm
    texts = ["Tokenization works. Unbelievably well", "x" * 50 + "yz middle.start here"]
    starts = [np.asarray([0, 3, 22, 25]), np.asarray([0, 51, 61])]  # mid-word and mid-punctuation offsets
    for fast_path in (True, False):
        enc = DocumentEncoder(tokenizer, info, fast_path=fast_path).encode(texts, starts)
        for d, text in enumerate(texts):
            assert enc.ids[enc.doc_offsets[d]:enc.doc_offsets[d + 1]].tolist() == reference(tokenizer, text)
        full = tokenizer.encode(texts[0], add_special_tokens=False)
        expected = [full.char_to_token(c) for c in starts[0]]
        assert enc.sent_starts[:4].tolist() == expected


def test_batches_of_documents_concatenate(minilm, books):
    tokenizer, info = minilm
    starts = [np.asarray(sentence_starts(t), dtype=np.int64) for t in books]
    one = DocumentEncoder(tokenizer, info).encode(books, starts)
    many = DocumentEncoder(tokenizer, info, batch_chars=10_000).encode(books, starts)
    for name in ("ids", "doc_offsets", "sent_starts", "sent_ends", "doc_sent_offsets"):
        assert np.array_equal(getattr(one, name), getattr(many, name)), name
