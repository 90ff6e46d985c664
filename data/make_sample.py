"""Rebuild the labeled set and the scoring lake in ``data/`` from the bundled books.

The task is "which book is this sentence from?" (Alice in Wonderland, The Time
Machine, Dr Jekyll and Mr Hyde): public domain and license-clean. Sentences are
taken from the body of each book (Gutenberg header/footer skipped), shuffled with
a fixed seed, and split: ``labeled/train.csv`` for fine-tuning and a hive-
partitioned Parquet lake ``lake/dt=.../part-0.parquet`` for bulk scoring (with an
``id`` key and a few deliberately bad rows: null, empty, very long).

Run: ``python data/make_sample.py`` (deterministic; the outputs are committed).
"""

from __future__ import annotations

import csv
import gzip
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
BOOKS = {"alice": "11-0.txt.gz", "time_machine": "35-0.txt.gz", "jekyll": "43-0.txt.gz"}
START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", re.S)
END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", re.S)
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'“‘])")


def book_sentences(name: str) -> list[str]:
    raw = gzip.decompress((HERE / "books" / name).read_bytes()).decode("utf-8-sig")
    body = raw[START.search(raw).end() : END.search(raw).start()]
    text = re.sub(r"\s+", " ", body)
    out = []
    for s in SENTENCE.split(text):
        s = s.strip()
        if 5 <= len(s.split()) <= 60 and not s.isupper():
            out.append(s)
    return out


def main() -> None:
    rng = random.Random(20261123)
    rows: list[tuple[str, str]] = []
    for label, name in BOOKS.items():
        sents = book_sentences(name)
        rng.shuffle(sents)
        rows += [(s, label) for s in sents[:700]]
    rng.shuffle(rows)
    train, lake = rows[:1200], rows[1200:]

    (HERE / "labeled").mkdir(exist_ok=True)
    with open(HERE / "labeled" / "train.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(train)

    texts: list[str | None] = [t for t, _ in lake]
    texts[3] = None
    texts[7] = ""
    texts[11] = "word " * 5000
    ids = list(range(len(texts)))
    gold = [g for _, g in lake]
    half = len(texts) // 2
    for part, sl in (("dt=2026-11-01", slice(0, half)), ("dt=2026-11-02", slice(half, None))):
        d = HERE / "lake" / part
        d.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": pa.array(ids[sl], pa.int64()), "text": pa.array(texts[sl], pa.string()), "gold": gold[sl]})
        pq.write_table(table, d / "part-0.parquet")
    print(f"train rows: {len(train)}, lake rows: {len(lake)}")


if __name__ == "__main__":
    main()
