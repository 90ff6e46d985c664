"""Small corpus and tokenizer directories for tests and benchmarks of masked-data generation.

Not the ingestion stage: no cleaning, no deduplication; sentences are split with the
ingestion stage's splitter when it is importable (else a plain regex). It writes the
corpus format of :mod:`bert_core.ingest.schema` exactly, so generation reads it as it
reads ingestion's output.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.stageio import write_manifest

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")


def split_sentences(text: str) -> list[int]:
    """Character offsets where sentences start (``[0, ...]``; ``[]`` for an empty text)."""
    try:
        from bertflow.bert_core.ingest.sentences import sentence_starts
    except ImportError:
        if not text:
            return []
        return [0, *(m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text))]
    return sentence_starts(text)


def write_corpus(directory: str | Path, docs: Sequence[str], docs_per_shard: int | None = None,
                 sent_starts: Sequence[Sequence[int]] | None = None, source: str = "synthetic",
                 row_group_mb: float = 8.0) -> Path:
    """A corpus dir: ``shard-*.parquet`` (``CORPUS_SCHEMA``) + ``manifest.json`` with ``corpus_fingerprint``.

    Row groups close after ``row_group_mb`` of text, as the ingest stage writes them.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    per = docs_per_shard or max(len(docs), 1)
    starts = [list(s) for s in sent_starts] if sent_starts is not None else [split_sentences(t) for t in docs]
    shards, digest = [], hashlib.sha256()
    for k, a in enumerate(range(0, max(len(docs), 1), per)):
        texts = list(docs[a:a + per])
        ids = [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts]
        for i in ids:
            digest.update(i.encode())
        table = pa.table(
            {
                "doc_id": pa.array(ids, pa.string()),
                "source": pa.array([source] * len(texts), pa.string()),
                "text": pa.array(texts, pa.string()),
                "n_chars": pa.array([len(t) for t in texts], pa.int32()),
                "sent_starts": pa.array(starts[a:a + per], pa.list_(pa.int32())),
            },
            schema=CORPUS_SCHEMA,
        )
        name = f"shard-{k:05d}.parquet"
        with pq.ParquetWriter(d / name, CORPUS_SCHEMA, compression="zstd") as writer:
            start, size = 0, 0
            for i, t in enumerate(texts):
                size += len(t)
                if size >= row_group_mb * 1e6 or i == len(texts) - 1:
                    writer.write_table(table.slice(start, i + 1 - start))
                    start, size = i + 1, 0
            if not texts:
                writer.write_table(table)
        shards.append({"name": name, "rows": len(texts)})
    write_manifest(d, {"stage": "ingest", "corpus_fingerprint": digest.hexdigest(), "shards": shards,
                       "counts": {"docs_out": len(docs)}})
    return d


def train_wordpiece(directory: str | Path, texts: Sequence[str], vocab_size: int = 1000,
                    lowercase: bool = True, specials: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                    min_frequency: int = 1) -> Path:
    """A BERT-style WordPiece tokenizer dir (``tokenizer.json`` + ``vocab.txt``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]" if "[UNK]" in specials else specials[0]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                        min_frequency=min_frequency, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if "[CLS]" in specials and "[SEP]" in specials:
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                       ("[CLS]", tok.token_to_id("[CLS]")))
    tok.save(str(d / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (d / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
    return d


def synthetic_documents(n_docs: int, seed: int = 0, sentences: tuple[int, int] = (2, 40),
                        words: tuple[int, int] = (3, 12), vocabulary: int = 3000) -> list[str]:
    """Random English-looking documents: Zipf-distributed made-up words, sentences ending in . ! or ?.

    Long made-up words split into several WordPiece pieces, which exercises whole-word
    masking; random word sequences make any run of a few tokens unique to one place.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["sh", "th", "qu", "x"]
    lexicon = ["".join(rng.choice(syllables, size=int(n))) for n in rng.integers(1, 5, size=vocabulary)]
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 0.8
    n_sent = rng.integers(sentences[0], sentences[1] + 1, size=n_docs)
    n_words = rng.integers(words[0], words[1] + 1, size=int(n_sent.sum()))
    drawn = rng.choice(vocabulary, size=int(n_words.sum()), p=weights / weights.sum()).tolist()
    comma = (rng.random(len(n_words)) < 0.3).tolist()
    ends = rng.choice([".", ".", ".", "!", "?"], size=len(n_words)).tolist()
    docs, w, s = [], 0, 0
    for d in range(n_docs):
        out = []
        for _ in range(int(n_sent[d])):
            ws = [lexicon[i] for i in drawn[w:w + int(n_words[s])]]
            w += int(n_words[s])
            ws[0] = ws[0].capitalize()
            if len(ws) > 4 and comma[s]:
                ws[2] += ","
            out.append(" ".join(ws) + ends[s])
            s += 1
        docs.append(" ".join(out))
    return docs
