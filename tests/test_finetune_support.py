"""Helpers for the fine-tuning tests (no tests here): a tiny BERT directory and easy synthetic tasks.

The tiny BERT is what our pretraining exports (a ``BertForPreTraining`` directory with
config.json, model.safetensors, vocab.txt and tokenizer.json), only 2 layers x 64 hidden,
with a WordPiece vocabulary small enough that rare words split into several pieces.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FILLER = (
    "the a cat dog sat on mat with house river walked quietly under bright morning light "
    "table window over green field small boat slowly moved across water people said nothing"
).split()
PERSONS = [["alice"], ["zanderbrook"], ["bob", "marley"]]
PLACES = [["paris"], ["quixotlan"], ["new", "york"]]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, label): the label of the one keyword in the text: "great" pos, "awful" neg, "okay" neu."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 12))))
        label = ["pos", "neg", "neu"][i % 3]
        keyword = {"pos": "great", "neg": "awful", "neu": "okay"}[label]
        words.insert(int(rng.integers(0, len(words) + 1)), keyword)
        rows.append((" ".join(words), label))
    return rows


def pair_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(text, text_pair, label): label "1" iff the *second* segment holds "great" (the first may too)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
        b = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
        label = str(i % 2)
        if label == "1":
            b.insert(int(rng.integers(0, len(b) + 1)), "great")
        if rng.random() < 0.5:
            a.insert(int(rng.integers(0, len(a) + 1)), "great")
        rows.append((" ".join(a), " ".join(b), label))
    return rows


def ner_rows(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """(words, IOB2 tags) with one or two person/place names among filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        tags = ["O"] * len(words)
        for _ in range(int(rng.integers(1, 3))):
            kind, names = ("PER", PERSONS) if rng.random() < 0.5 else ("LOC", PLACES)
            name = names[int(rng.integers(0, len(names)))]
            at = int(rng.integers(0, len(words) + 1))
            words[at:at] = name
            tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        rows.append((words, tags))
    return rows


def write_csv(path: Path, header: list[str], rows: list[tuple], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in rows:
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def tiny_vocab() -> list[str]:
    """A deterministic WordPiece vocabulary: specials, letters, ``##``-letters, digits and punctuation,
    the filler and keyword words whole, and a few sub-words. Names are left out, so they split
    into several pieces (``zanderbrook`` -> ``z ##and ##er ##b ##r ##o ##o ##k``).

    (Training one with ``tokenizers`` is not reproducible across processes: ties between equally
    frequent merges are broken in hash order.)
    """
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    symbols = list("0123456789.,;:!?'\"()-") + ["##" + d for d in "0123456789"]
    words = sorted(set(FILLER) | {"great", "awful", "okay"})
    pieces = ["##and", "##er", "##an", "##or", "##ck"]
    return specials + letters + ["##" + c for c in letters] + symbols + words + pieces


def build_tiny_bert(directory: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random (seeded) tiny BERT with the tiny vocabulary, as our pretraining exports it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForPreTraining(config)
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))  # adds tokenizer.json
    return directory
