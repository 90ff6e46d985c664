"""Load and check the WordPiece tokenizer directory that masked-data generation uses.

Loaded with ``tokenizers.Tokenizer.from_file(dir/"tokenizer.json")`` (the Rust
tokenizer, fast and free of ``transformers``), with truncation and padding switched off
(a ``tokenizer.json`` saved from a model often carries ``max_length`` truncation, which
would silently cut documents).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.mask.masking import word_start_table
from bertflow.bert_core.vocab.stage import tokenizer_fingerprint

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
"""Manifest name -> token string of the special tokens every BERT vocabulary must hold."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What generation and the reader need to know about a tokenizer directory."""

    directory: str
    vocab_size: int  # with added tokens: ids are < vocab_size
    special_ids: dict[str, int]  # pad, unk, cls, sep, mask
    fingerprint: str  # sha256 of vocab.txt (vocab.stage.tokenizer_fingerprint)
    continuation_prefix: str  # "##"
    lowercase: bool | None  # the BertNormalizer's setting (None: not a BertNormalizer)
    normalizer: dict[str, Any] | None  # tokenizer.json's "normalizer" section
    pre_tokenizer: dict[str, Any] | None  # tokenizer.json's "pre_tokenizer" section

    @property
    def id_type(self) -> str:
        """The narrowest unsigned type holding every id: ``uint16`` up to 65,536 entries."""
        return "uint16" if self.vocab_size <= 1 << 16 else "uint32"

    def special_table(self) -> np.ndarray:
        """Bool lookup ``[vocab_size]``: True at special-token ids."""
        table = np.zeros(self.vocab_size, dtype=bool)
        table[list(self.special_ids.values())] = True
        return table


def load_tokenizer(directory: str | Path):
    """Open a tokenizer dir: returns ``(tokenizers.Tokenizer, TokenizerInfo)``.

    Raises InputError naming the missing file or special token, or a vocab.txt that does
    not match tokenizer.json.
    """
    from tokenizers import Tokenizer

    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"tokenizer directory {d} does not exist (run the vocab stage, or point at a tokenizer dir)")
    tok_file, vocab_file = d / "tokenizer.json", d / "vocab.txt"
    for f in (tok_file, vocab_file):
        if not f.is_file():
            raise InputError(f"tokenizer directory {d} has no {f.name} (a Hugging Face WordPiece tokenizer dir "
                             "holds tokenizer.json and vocab.txt; run the vocab stage to make one)")
    try:
        tokenizer = Tokenizer.from_file(str(tok_file))
        spec = json.loads(tok_file.read_text(encoding="utf-8"))
    except Exception as exc:  # the Rust loader raises a plain Exception on a bad file
        raise InputError(f"{tok_file} cannot be loaded as a tokenizer: {exc}") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    special_ids = {}
    for name, token in SPECIAL_TOKENS.items():
        idx = tokenizer.token_to_id(token)
        if idx is None:
            raise InputError(f"tokenizer {tok_file} has no {token} token: masked-data generation needs "
                             f"{', '.join(SPECIAL_TOKENS.values())} in the vocabulary")
        special_ids[name] = int(idx)
    vocab_lines = _count_vocab_lines(vocab_file)
    base_size = tokenizer.get_vocab_size(with_added_tokens=False)
    if vocab_lines != base_size:
        raise InputError(f"{vocab_file} has {vocab_lines} entries but {tok_file} has {base_size}: "
                         "the two files come from different tokenizers")
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer")
    lowercase = None
    if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        lowercase = bool(normalizer.get("lowercase", True))
    info = TokenizerInfo(
        directory=str(d),
        vocab_size=int(tokenizer.get_vocab_size(with_added_tokens=True)),
        special_ids=special_ids,
        fingerprint=tokenizer_fingerprint(d),
        continuation_prefix=str(model.get("continuing_subword_prefix") or "##"),
        lowercase=lowercase,
        normalizer=normalizer if isinstance(normalizer, dict) else None,
        pre_tokenizer=spec.get("pre_tokenizer") if isinstance(spec.get("pre_tokenizer"), dict) else None,
    )
    return tokenizer, info


def word_starts_of(tokenizer, info: TokenizerInfo) -> np.ndarray:
    """Bool lookup ``[vocab_size]``: False at continuation pieces (``##...``)."""
    return word_start_table(tokenizer.get_vocab(with_added_tokens=True), info.vocab_size, info.continuation_prefix)


def _count_vocab_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return len(lines)
