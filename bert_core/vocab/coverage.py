"""How well a vocabulary covers text it was not trained on.

- ``unk_rate``: share of WordPiece tokens that are ``[UNK]`` (a word WordPiece cannot spell
  becomes one ``[UNK]``, so this is also the share of such words among tokens);
- ``tokens_per_word``: WordPiece tokens per pre-token ("word" = what BertPreTokenizer
  yields: runs of non-space, non-punctuation characters, and single punctuation marks).
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer

from bertflow.bert_core.vocab.tokenizer import UNK

_PARAGRAPH = re.compile(r"\n\s*\n")
_PIECE_CHARS = 20_000  # encode paragraphs grouped into pieces of about this size


def coverage(tok: Tokenizer, texts: list[str]) -> dict[str, float]:
    unk_id = tok.token_to_id(UNK)
    tokens = unks = words = chars = 0
    pieces = list(_pieces(texts))
    for start in range(0, len(pieces), 256):
        for enc in tok.encode_batch(pieces[start : start + 256], add_special_tokens=False):
            ids = enc.ids
            tokens += len(ids)
            unks += ids.count(unk_id)
            word_ids = [w for w in enc.word_ids if w is not None]
            words += (max(word_ids) + 1) if word_ids else 0
    chars = sum(len(t) for t in texts)
    return {
        "eval_chars": chars,
        "eval_words": words,
        "eval_tokens": tokens,
        "unk_tokens": unks,
        "unk_rate": unks / tokens if tokens else 0.0,
        "tokens_per_word": tokens / words if words else 0.0,
        "chars_per_token": chars / tokens if tokens else 0.0,
    }


def _pieces(texts: list[str]):
    """Paragraph groups of ~_PIECE_CHARS, so one long book does not become one huge sequence."""
    for text in texts:
        buf: list[str] = []
        size = 0
        for para in _PARAGRAPH.split(text):
            buf.append(para)
            size += len(para)
            if size >= _PIECE_CHARS:
                yield "\n\n".join(buf)
                buf, size = [], 0
        if buf:
            yield "\n\n".join(buf)
