"""A rule-based sentence splitter, good enough for next-sentence prediction.

A sentence starts:
- at offset 0 (of any non-empty text);
- after ``.``, ``!``, ``?`` or ``…`` (optionally followed by closing quotes/brackets) and
  whitespace, when the next character is an upper-case letter or an opening quote/bracket;
  a single ``.`` after a known abbreviation (``Mr.``, ``Dr.``, ``St.``, ``e.g.``), an initial
  (``J. M. Barrie``) or a dotted acronym (``U.S.``) does not end a sentence;
- after a paragraph break (a blank line), whatever comes next.
A single newline is plain whitespace (hard-wrapped prose). Offsets are Python ``str``
indices (Unicode code points), so ``text[starts[i]:starts[i+1]]`` is sentence ``i``.
"""

from __future__ import annotations

import re
import unicodedata

ABBREVIATIONS = frozenset(
    """mr mrs ms messrs mme mlle dr drs st ste jr sr prof rev revd fr gen col capt lt sgt cpl maj adm cmdr
    gov sen rep pres supt hon esq mt ft vol vols ch chap fig figs p pp vs v cf viz al approx dept
    jan feb mar apr jun jul aug sep sept oct nov dec co corp inc ltd bros ave blvd rd e.g i.e a.m p.m""".split()
)
_OPEN = "\"'“‘«(\\["
_CLOSE = "\"'”’»)\\]"


def _upper_class() -> str:
    """Upper- and title-case letters of the Latin, Greek and Cyrillic blocks, as a regex class body."""
    return re.escape("".join(chr(c) for c in range(0x41, 0x2000) if chr(c).isupper() or chr(c).istitle()))


def _not_after_abbreviation() -> str:
    """Negative lookbehinds (fixed width, one per length) for a ``.`` that ends no sentence.

    Each includes the dot, so it is checked right after the dot matched."""
    by_len: dict[int, list[str]] = {}
    for word in ABBREVIATIONS:
        by_len.setdefault(len(word), []).append(re.escape(word))
    looks = [rf"(?<!\b(?i:{'|'.join(sorted(words))})\.)" for _, words in sorted(by_len.items())]
    looks.append(r"(?<!\b[A-HJ-Z]\.)")  # an initial: "J. M. Barrie" (but "I." ends sentences)
    looks.append(r"(?<!\.[A-Za-z]\.)")  # the last letter of a dotted acronym: "U.S.", "e.g.", "Ph.D."
    return "".join(looks)


# Two patterns scanned separately: one alternation of both is 4x slower (no fast prefix scan).
# The lookbehinds run only after a lone "." matched (they include it), which keeps the scan fast.
_SENTENCE_END = re.compile(
    rf"(?:\.(?:[.!?…]+|{_not_after_abbreviation()})|[!?…][.!?…]*)[{_CLOSE}]*\s+(?=[{_upper_class()}{_OPEN}])"
)
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where sentences begin; ``[0]`` for a one-sentence text, ``[]`` for ""."""
    if not text:
        return []
    n = len(text)
    ends = {m.end() for m in _SENTENCE_END.finditer(text)}
    ends.update(m.end() for m in _PARAGRAPH_BREAK.finditer(text))
    ends.discard(n)
    ends.discard(0)
    return [0, *sorted(ends)]


SPLITTER_VERSION = f"rules-1/unicode-{unicodedata.unidata_version}"
"""Goes into the corpus fingerprint: a change of rules changes ``sent_starts``."""
