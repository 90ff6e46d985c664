"""Cleaning steps, the Gutenberg stripper (on real books) and the sentence splitter."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertflow.bert_core.ingest.clean import Cleaner, normalize_whitespace, strip_control
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.decode import decode_bytes
from bertflow.bert_core.ingest.gutenberg import strip_gutenberg
from bertflow.bert_core.ingest.sentences import sentence_starts
from tests.helpers import BOOKS



def _sentences(text: str) -> list[str]:
    starts = sentence_starts(text)
    return [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)])]


# ------------------------------------------------------------------ whitespace / control / NFC


def test_whitespace_convention():
    raw = "  Title\r\n\r\n\r\n\r\nFirst  line\t of para,\r\nwrapped line.   \r\n \t \r\nNext\u00a0para\u2003here.\n\n\n"
    assert normalize_whitespace(raw) == "Title\n\nFirst line of para,\nwrapped line.\n\nNext para here."


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .\n\r\t\u00a0\u2009é")), max_size=60))
def test_whitespace_normalisation_is_idempotent_and_canonical(text):
    once = normalize_whitespace(text)
    assert normalize_whitespace(once) == once
    assert "\r" not in once and "\t" not in once and "  " not in once and "\n\n\n" not in once
    assert once == once.strip()
    assert " \n" not in once and "\n " not in once


def test_control_characters_go_but_newlines_and_tabs_stay():
    assert strip_control("a\x00b\x07c\td\ne\x1bf\x9fg\ufeffh\x7f") == "abc\td\nefgh"


def test_nfc_composes_decomposed_accents():
    cleaner = Cleaner(IngestConfig(strip_gutenberg=False))
    assert cleaner("Cafe\u0301 nai\u0308ve") == "Café naïve"
    assert Cleaner(IngestConfig(nfc=False, strip_gutenberg=False))("Cafe\u0301") == "Cafe\u0301"


def test_every_cleaning_step_can_be_switched_off():
    cfg = IngestConfig(nfc=False, strip_control=False, normalize_whitespace=False, strip_gutenberg=False)
    raw = "*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n a\x00  b\u0301 \r\n"
    assert Cleaner(cfg)(raw) == raw


# ------------------------------------------------------------------ Gutenberg


@pytest.mark.parametrize("book", ["1080.txt.gz", "11-0.txt.gz", "43-0.txt.gz"])
def test_gutenberg_boilerplate_is_stripped_from_real_books(book):
    raw = decode_bytes(gzip.decompress((BOOKS / book).read_bytes())).text
    body, found = strip_gutenberg(raw)
    assert found
    assert "Project Gutenberg" in raw and "PROJECT GUTENBERG" in raw
    assert "PROJECT GUTENBERG" not in body.upper()  # header, licence and footer all gone
    assert len(body) > 0.4 * len(raw)
    cleaned = normalize_whitespace(body)
    first_line = cleaned.splitlines()[0]
    expected_first = {"1080.txt.gz": "A MODEST PROPOSAL", "11-0.txt.gz": "ALICE’S ADVENTURES IN WONDERLAND", "43-0.txt.gz": "THE STRANGE CASE OF DR. JEKYLL AND MR. HYDE"}
    assert first_line == expected_first[book]


def test_gutenberg_variants():
    old = "Header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\nThe book.\n\nEnd of Project Gutenberg Etext of X\nmore"
    assert strip_gutenberg(old) == ("\n\nThe book.\n\n", True)
    new = "H\n***START OF THE PROJECT GUTENBERG EBOOK X***\nBody.\n***END OF THE PROJECT GUTENBERG EBOOK X***\nL"
    assert strip_gutenberg(new) == ("\nBody.\n", True)
    credit = "H\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nProduced by Some One\nand Another\n\nBody."
    assert strip_gutenberg(credit) == ("\n\nBody.", True)
    wrapped = "H\n*** START OF THIS PROJECT GUTENBERG EBOOK\nA LONG TITLE ***\n\nBody."
    assert strip_gutenberg(wrapped) == ("\n\nBody.", True)


def test_text_without_markers_is_left_alone():
    text = "A novel that mentions Project Gutenberg in passing.\n\nThe end of the story."
    assert strip_gutenberg(text) == (text, False)


# ------------------------------------------------------------------ sentences


def test_sentence_splitter_rules():
    text = (
        'Mr. Smith met Dr. Jones at St. Paul\'s. "Hello!" he said. Was it J. M. Barrie? Yes. '
        "So did I. The U.S. Army came.\n\nCHAPTER II\n\nIt rained (a lot.) Then (Briefly) it stopped... Really?! Yes"
    )
    assert _sentences(text) == [
        "Mr. Smith met Dr. Jones at St. Paul's.",
        '"Hello!" he said.',
        "Was it J. M. Barrie?",
        "Yes.",
        "So did I.",
        "The U.S. Army came.",
        "CHAPTER II",
        "It rained (a lot.)",
        "Then (Briefly) it stopped...",
        "Really?!",
        "Yes",
    ]


def test_no_split_before_lowercase_or_inside_a_line_without_punctuation():
    assert _sentences("The value is 3.14 and e.g. pi. not a new sentence") == ["The value is 3.14 and e.g. pi. not a new sentence"]
    assert _sentences("hard wrapped\nline that goes on.\nNext Sentence.") == ["hard wrapped\nline that goes on.", "Next Sentence."]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aB .!?\n\"'")), max_size=80))
def test_sentence_starts_are_sorted_in_range_and_start_at_zero(text):
    starts = sentence_starts(text)
    if not text:
        assert starts == []
        return
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    assert all(0 <= s < len(text) for s in starts)
