"""Every helper and constant the tests share (fixtures live in ``conftest.py``; tests import these by name).

Sections: paths and markers; data builders; tiny models and tokenizers; corpus and lake
writers and readers; fault injection; servers; environments without bertflow. Heavy libraries (torch, transformers,
tokenizers, httpx) are imported inside the functions that need them, so importing this
module costs nothing a test does not use.
"""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


# ================================================================================ paths and markers
# The checkout, its bundled sample, and the real data sets beside it (absent on most machines).
REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO / "data" / "books"
SHARED_DATA = REPO.parent / "shared" / "data"
requires_shared_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")

TINY_OVERRIDES = ["pretrain.max_steps=30"]  # the tiny preset, shortened for the tests that run the whole pipeline

# A sweep over the tiny preset's fine-tuning that exercises every trial state in 4 trials: with seed 0 the
# sampler draws (epochs, text_column) = (1, text), (2, text), (2, text), (1, no_such_column), so trials 1 and 2
# reach epoch 2 and the threshold pruner (no accuracy reaches 2.0) prunes them; trial 3 fails (no such column).
TINY_SWEEP_SPACE = {
    "params": {"finetune.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
               "finetune.epochs": {"type": "categorical", "choices": [1, 2]},
               "finetune.text_column": {"type": "categorical", "choices": ["text", "no_such_column"]}},
    "sampler": {"seed": 0, "startup_trials": 4},
    "pruner": {"kind": "threshold", "lower": 2.0, "min_epochs": 2},
}
TINY_SWEEP_STATES = ["complete", "pruned", "pruned", "failed"]


def sweep_overrides(base_model: Path) -> list[str]:
    """The tiny preset fine-tuning ``base_model`` on short sequences: a trial takes seconds."""
    return [f"finetune.base_model={base_model}", "finetune.max_length=32"]


# ================================================================================ data builders
# Seeded synthetic texts: labelled rows for fine-tuning, sentences for the tiny classifier,
# documents for masked-data generation. Every builder is deterministic in its seed.
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


TOPICS = {  # three disjoint vocabularies: a probe on MiniLM separates them with wide margins
    "sport": "goal match team coach player scored league season stadium referee".split(),
    "food": "recipe oven flour butter sugar bake dough salt kitchen dinner".split(),
    "money": "market shares bank profit investor stock price interest trade fund".split(),
}


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, label): 3 to 11 words of one topic of :data:`TOPICS`, labels in turn."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        rows.append((" ".join(rng.choice(TOPICS[label], size=int(rng.integers(3, 12)))), label))
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


NAMES = ["alice", "bob", "zanderbrook", "carol", "dave", "erin"]
TOWNS = ["paris", "quixotlan", "rome", "oslo", "lima", "cairo"]


def squad_articles(n_articles: int, seed: int, paragraphs: int = 3, unanswerable: float = 0.0,
                   words: tuple[int, int] = (5, 25)) -> list[dict]:
    """SQuAD-layout articles about who lived where: "<name> lived in <town>" among filler words.

    Each paragraph asks "where did <name> live?" and "who lived in <town>?"; with
    ``unanswerable`` > 0 that share of paragraphs instead asks about a name the context
    does not hold (v2.0: ``is_impossible``, no answers).
    """
    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        paras = []
        for p in range(paragraphs):
            filler = [rng.choice(FILLER) for _ in range(rng.randint(*words))]
            name, town = rng.choice(NAMES), rng.choice(TOWNS)
            fact = f"{name} lived in {town}"
            at = rng.randint(0, len(filler))
            context = " ".join(filler[:at] + [fact] + filler[at:]) + "."
            start = context.index(fact)
            if rng.random() < unanswerable:
                other = rng.choice([n for n in NAMES if n != name])
                qas = [{"id": f"{a}-{p}-x", "question": f"where did {other} live?", "answers": [],
                        "is_impossible": True}]
            else:
                qas = [{"id": f"{a}-{p}-0", "question": f"where did {name} live?",
                        "answers": [{"text": town, "answer_start": start + len(name) + len(" lived in ")}]},
                       {"id": f"{a}-{p}-1", "question": f"who lived in {town}?",
                        "answers": [{"text": name, "answer_start": start}]}]
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"article-{a}", "paragraphs": paras})
    return data


def write_squad(path: Path, articles: list[dict], version: str = "1.1") -> Path:
    import json

    path.write_text(json.dumps({"version": version, "data": articles}), encoding="utf-8")
    return path


WORDS = ("the a film movie story plot actor great good bad terrible wonderful boring funny sad long short very not "
         "really quite it is was and but with of to in on for this that i you we they love hate liked enjoyed").split()
LABELS = {0: "neg", 1: "neu", 2: "pos"}  # the tiny classifier's labels


def sentence(rng: random.Random, lo: int = 3, hi: int = 25) -> str:
    """``lo`` to ``hi`` words of :data:`WORDS` (the tiny classifier's tokenizer knows them all)."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def synthetic_documents(n_docs: int, seed: int = 0, sentences: tuple[int, int] = (2, 40),
                        words: tuple[int, int] = (3, 12), vocabulary: int = 3000) -> list[str]:
    """Random English-looking documents: Zipf-distributed made-up words, sentences ending in . ! or ?.

    Long made-up words split into several WordPiece pieces, which exercises whole-word
    masking; random word sequences make any run of a few tokens unique to one place.
    """
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


# ================================================================================ tiny models and tokenizers
# Built here, in seconds, because nothing can be downloaded: a BERT as our pretraining exports it,
# a sequence classifier for scoring, and WordPiece tokenizers trained on the tests' own text.


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


def build_tiny_classifier(directory: Path) -> Path:
    """A 2-layer x 32-hidden BERT classifier (labels :data:`LABELS`) with a WordPiece tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    rng = random.Random(0)
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [sentence(rng) for _ in range(300)] + ["0123456789 éàü ,.!?'"]
    raw.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3, initializer_range=0.5,
                        id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_tiny_head(directory: Path, head: str, labels: Sequence[str] = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
                    layers: int = 2, positions: int = 64, context_free: bool = False, seed: int = 0) -> Path:
    """A random (seeded) tiny BERT token classifier (``head="token"``, tags ``labels``) or QA model (``"qa"``)
    with the tiny vocabulary. ``context_free``: no layers and zero position embeddings, so a token's
    prediction depends on the token alone (long-text windowing must then change nothing)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForTokenClassification

    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    extra = {} if head == "qa" else dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={n: i for i, n in enumerate(labels)})
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=0 if context_free else layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=positions,
                        initializer_range=0.5, **extra)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (BertForQuestionAnswering if head == "qa" else BertForTokenClassification)(config)
    if context_free:
        with torch.no_grad():
            model.bert.embeddings.position_embeddings.weight.zero_()
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    return directory


def build_minilm_classifier(directory: Path, base: Path, steps: int = 100) -> Path:
    """MiniLM-L6 (the real checkpoint in ``base``) with a fresh 3-label head fitted as a linear probe on
    :func:`topic_rows` (the encoder untouched, ~1 s): a real model whose predictions have margins, as a
    fine-tuned one's do. Saved as the fine-tune stage exports (``directory`` is its ``model/``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = list(TOPICS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores (see score_cfg)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        tok = AutoTokenizer.from_pretrained(base)
        train = topic_rows(90, seed=0)
        enc = tok([t for t, _ in train], padding=True, return_tensors="pt")
        with torch.no_grad():
            features = model.eval().bert(**enc).pooler_output
        gold = torch.tensor([names.index(label) for _, label in train])
        opt = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model.classifier(features), gold).backward()
            opt.step()
    torch.set_num_threads(threads)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


# ================================================================================ corpus and lake writers and readers
# Input files in the formats the stages read (CSV, CoNLL, a Parquet lake), and readers of stage
# outputs that go through the library's own readers. Corpora of ready text: ``bert_core.ingest.documents``.


def write_csv(path: Path, header: list[str], rows: list[tuple], delimiter: str = ",") -> Path:
    """A CSV file with a header row (a TSV file with a tab ``delimiter``)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    """A CoNLL-2003 file (word, POS, chunk, NER tag) of ``(words, tags)`` sentences."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in rows:
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def corpus_column(corpus: Path, name: str) -> list:
    """One column of an ingested corpus, in corpus order (read through the corpus reader, which checks the dir)."""
    from bertflow.bert_core.ingest.reader import open_corpus

    return [v for batch in open_corpus(corpus).iter_batches([name]) for v in batch.column(0).to_pylist()]


def corpus_texts(corpus: Path) -> list[str]:
    """Every document of an ingested corpus, in corpus order."""
    return corpus_column(corpus, "text")


def head_lake(path: Path, head: str, rows: int = 40, seed: int = 7) -> Path:
    """One Parquet file of ``rows`` filler texts of 3-30 words for a ``token`` head (``text``) or a ``qa``
    head (``question``, ``context``), with an ``id`` column."""
    import random

    rng = random.Random(seed)
    words = [" ".join(rng.choice(FILLER + ["alice", "paris", "bob"]) for _ in range(rng.randint(3, 30)))
             for _ in range(rows)]
    data = {"id": list(range(rows)), "text": words} if head == "token" else \
        {"id": list(range(rows)), "question": [w[:20] + "?" for w in words], "context": words[::-1]}
    return write_parquet(path, data)


def write_parquet(path: Path, table: dict | pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), path)
    return path


def make_lake(root: Path, files: int, rows: int, seed: int = 0) -> list[str]:
    """``files`` Parquet files of ``rows`` (id, text) rows each under ``root``; returns the texts in id order."""
    rng = random.Random(seed)
    texts = []
    for f in range(files):
        chunk = [sentence(rng) for _ in range(rows)]
        texts += chunk
        write_parquet(root / f"part-{f:03d}.parquet", {"id": list(range(f * rows, (f + 1) * rows)), "text": chunk})
    return texts


def score_cfg(lake: Path, **kw):
    """A ScoreConfig for the tiny classifier on CPU: small batches, short sequences (``kw`` overrides)."""
    from bertflow.bert_core.score.config import ScoreConfig

    kw.setdefault("batch_size", 8)
    kw.setdefault("sort_window", 4)
    kw.setdefault("max_length", 32)
    kw.setdefault("device", "cpu")
    kw.setdefault("cpu_threads", 1)  # 2 cores shared with other tests: a second thread only adds OpenMP spin contention
    return ScoreConfig(input=str(lake), **kw)


def read_scored(out: Path) -> pa.Table:
    """The scoring stage's output, read as users read it."""
    from bertflow.bert_core.score.stage import output_dataset

    return output_dataset(out).to_table()


# ================================================================================ fault injection
# Run a stage call in a forked child and ``kill -9`` it. Why fork: a fresh Python that imports
# torch costs 3-5 s, ten seeds per stage would not fit the suite's budget; a child forked from the
# warm test process starts in milliseconds and runs the real stage code, and ``SIGKILL`` gives it no
# chance to clean up, exactly like the OOM killer or a pre-empted node. Torch is switched to one
# intra-op thread before forking (OpenMP is not fork-safe once its thread pool exists) and the child
# leaves with ``os._exit`` so nothing of pytest runs in it.
#
# The kill time is seeded: a uniform fraction (5-85 %) of the time an uninterrupted forked run of
# the same call took, so kills land anywhere in the run's set-up and work. Each kill reports whether
# it landed mid-run (the child was still working) or after it had finished. The narrowest windows
# (a rename, a delete) are hit on purpose instead: :func:`kill_at` arms a :func:`die` call there.
_FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class Killed:
    """How one fault-injected run ended."""

    seed: int
    delay_s: float  # when SIGKILL was sent, seconds after the fork
    landed: bool  # the child was still working when it was killed (False: it had already finished)
    state: str = ""  # what the test found on disk right after the kill (set by the test)


@dataclass
class KillLog:
    """The kills of one stage's test, for its summary line (seeds, landed mid-run, after completion)."""

    stage: str
    kills: list[Killed] = field(default_factory=list)

    @property
    def landed(self) -> int:
        return sum(k.landed for k in self.kills)

    def add(self, killed: Killed) -> None:
        self.kills = [k for k in self.kills if k.seed != killed.seed] + [killed]

    def summary(self) -> str:
        n = len(self.kills)
        states = Counter(k.state for k in self.kills if k.landed)
        found = ", ".join(f"{v}x {s}" for s, v in sorted(states.items()))
        return (f"{self.stage}: {n} seeds, {self.landed} kills landed mid-run ({found}), "
                f"{n - self.landed} after completion")


def _one_thread() -> None:
    """Left at one thread for the caller to restore (the test module uses the ``one_torch_thread`` fixture)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


def _forget_parents_fork_server() -> None:
    """In a forked child: drop the parent's fork-server handle, so a process pool here starts its own.

    The child inherits the handle but is not the fork server's parent: using it fails in
    ``os.waitpid`` (ChildProcessError) as soon as the stage starts a forkserver pool.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None


def _child(fn: Callable[[], object], conn) -> None:
    try:
        _forget_parents_fork_server()
        fn()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        try:
            conn.send(traceback.format_exc())
        finally:
            os._exit(1)
    os._exit(0)


def _start(fn: Callable[[], object]):
    _one_thread()
    recv, send = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(fn, send))  # not a daemon: stages may start worker pools
    proc.start()
    send.close()
    return proc, recv


def _failure(proc, recv) -> str:
    try:
        return recv.recv() if recv.poll(1) else f"exit code {proc.exitcode}"
    except EOFError:
        return f"exit code {proc.exitcode}"


def run_forked(fn: Callable[[], object], timeout: float = 120.0) -> float:
    """Run ``fn()`` to completion in a forked child; return its wall time (fork to exit)."""
    t0 = time.perf_counter()
    proc, recv = _start(fn)
    proc.join(timeout)
    seconds = time.perf_counter() - t0
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"forked run did not finish in {timeout} s")
    if proc.exitcode != 0:
        raise AssertionError(f"forked run failed:\n{_failure(proc, recv)}")
    recv.close()
    return seconds


def calibrate(call: Callable[[Path], object], root: Path, runs: int = 2) -> tuple[float, list[Path]]:
    """Time ``call(out)`` uninterrupted in forked children, each into a fresh ``root/forked-<i>``.

    Returns the fastest wall time (one slow run on a busy machine would push the kill
    times past the end of the run) and the output dirs, to compare with a reference.
    """
    outs = [root / f"forked-{i}" for i in range(runs)]
    return min(run_forked(lambda out=out: call(out)) for out in outs), outs


def kill_during(fn: Callable[[], object], seed: int, expected_s: float, lo: float = 0.05, hi: float = 0.85) -> Killed:
    """Start ``fn()`` in a forked child and ``SIGKILL`` it after a seeded fraction of ``expected_s``.

    ``expected_s`` is the wall time of an uninterrupted forked run (:func:`run_forked`);
    the delay is uniform in ``[lo, hi] * expected_s``. A child that failed on its own (not
    killed, non-zero exit) fails the test with its traceback.
    """
    delay = random.Random(seed).uniform(lo, hi) * expected_s
    t0 = time.perf_counter()
    proc, recv = _start(fn)
    proc.join(max(0.0, delay - (time.perf_counter() - t0)))
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    landed = proc.exitcode == -signal.SIGKILL  # 0: it finished first (maybe while we sent the signal)
    if not landed and proc.exitcode != 0:
        raise AssertionError(f"forked run failed before the kill:\n{_failure(proc, recv)}")
    recv.close()
    return Killed(seed, round(delay, 4), landed)


def kill_when(fn: Callable[[], object], ready: Callable[[int], bool], timeout: float = 60.0,
              before_kill: Callable[[int], None] | None = None) -> bool:
    """Start ``fn()`` in a forked child and SIGKILL it as soon as ``ready(child_pid)`` is true.

    ``before_kill(child_pid)`` runs just before the signal (e.g. to list the child's own
    children). Returns whether the kill landed mid-run (False: the child finished first).
    """
    proc, recv = _start(fn)
    deadline = time.monotonic() + timeout
    while proc.is_alive() and not ready(proc.pid):
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            raise AssertionError(f"the child never became ready to be killed in {timeout} s")
        time.sleep(0.005)
    if proc.is_alive():
        if before_kill is not None:
            before_kill(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    landed = proc.exitcode == -signal.SIGKILL
    if not landed and proc.exitcode != 0:
        raise AssertionError(f"forked run failed before the kill:\n{_failure(proc, recv)}")
    recv.close()
    return landed


def die() -> None:
    """``kill -9`` this process (the forked child), at exactly the point that calls it."""
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner: object, name: str, before: Callable[[], None] | None = None,
         after: Callable[[], None] | None = None) -> None:
    """Replace ``owner.name`` with a function that calls ``before()``, the original, then ``after()``.

    Meant for the forked child only (see :func:`kill_at`): the parent never sees the change.
    """
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        result = original(*args, **kwargs)
        if after is not None:
            after()
        return result

    setattr(owner, name, wrapped)


def kill_at(fn: Callable[[], object], arm: Callable[[], None], timeout: float = 60.0) -> None:
    """Run ``arm()`` then ``fn()`` in a forked child; ``arm`` sets up the :func:`die` call (e.g. with :func:`wrap`).

    Fails unless the child was killed by that SIGKILL (a child that finished or failed means
    the targeted point was never reached).
    """
    def armed() -> None:
        arm()
        fn()

    proc, recv = _start(armed)
    proc.join(timeout)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError(f"the armed child did not reach its kill point in {timeout} s")
    if proc.exitcode != -signal.SIGKILL:
        raise AssertionError(f"the armed child was not killed at its kill point:\n{_failure(proc, recv)}")
    recv.close()


def visible_parquet(root: str | Path) -> list[Path]:
    """``*.parquet`` files as a reader's glob sees them: no hidden or ``_``-prefixed path part."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.parquet")
                  if not any(s.startswith((".", "_")) for s in p.relative_to(root).parts))


def hidden_leftovers(parent: str | Path) -> list[str]:
    """Temporary names a killed writer leaves behind (``.x.tmp-*``, ``.x.old-*``) anywhere under ``parent``."""
    parent = Path(parent)
    return sorted(p.relative_to(parent).as_posix() for p in parent.rglob(".*")
                  if ".tmp-" in p.name or ".old-" in p.name)


# ================================================================================ servers
# Start and stop the real servers some tests talk to (Prefect, MLflow), bound to 127.0.0.1:
# :func:`running` fails the test if a server listens on any non-loopback address.


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[None]:
    """Run ``cmd`` in its own process group until the block ends; wait until ``health_url`` answers 200."""
    import httpx

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited during start-up (code {proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd[:3])} did not become healthy in {timeout:.0f} s")
            time.sleep(1)
        if sys.platform.startswith("linux"):
            assert_loopback_only(proc.pid, expect_port=httpx.URL(health_url).port)
        yield
    finally:
        stop_process_group(proc, grace_s=20)


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``grace_s`` seconds: a slow shutdown (a Prefect
    worker finishing its last poll on a loaded machine) must not fail the test that used it."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone when it exited already
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def listening_addresses(pgid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket listening in process group ``pgid`` (from Linux ``/proc``)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == pgid:
                pids.append(stat.parent)
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in (pid / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for pid in pids[:1]:  # one network namespace for the whole group
            with contextlib.suppress(OSError):
                for line in (pid / "net" / table).read_text().splitlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        hex_addr, hex_port = cols[1].split(":")
                        found.append((_proc_address(hex_addr), int(hex_port, 16)))
    return found


def _proc_address(hex_addr: str) -> str:
    """``/proc/net/tcp*`` addresses are 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def assert_loopback_only(pgid: int, expect_port: int | None = None) -> list[tuple[str, int]]:
    """Fail unless every listening socket of process group ``pgid`` is bound to a loopback address.

    ``expect_port``: the port the server answered on must be among those found, so a scan that
    finds nothing (the wrong group, an unreadable ``/proc``) fails instead of passing.
    """
    found = listening_addresses(pgid)
    if expect_port is not None:
        assert expect_port in {port for _, port in found}, (
            f"no listening socket on port {expect_port} found for process group {pgid} (found {found})")
    wide = []
    for address, port in found:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            wide.append(f"{address}:{port}")
    assert not wide, f"server (process group {pgid}) listens on {', '.join(wide)}: bind it to 127.0.0.1"
    return found


# ================================================================================ environments without bertflow
# A registered model must load where bertflow is not installed. ``python -I -S`` with only the test
# environment's site-packages folders on ``sys.path``: no checkout (``-I`` drops the current folder and
# PYTHON* variables) and no ``.pth`` hooks (``-S``), so the editable install of bertflow is not importable.


def site_packages() -> list[str]:
    """Every site-packages folder of this interpreter (a venv layered on another has two), in path order."""
    import sysconfig

    return list(dict.fromkeys([*(p for p in sys.path if p.endswith("site-packages")), sysconfig.get_paths()["purelib"]]))


def venv_bin_dirs() -> list[str]:
    """The ``bin`` folders of the venvs whose site-packages this interpreter uses (console scripts: uvicorn, ...)."""
    dirs = [str(Path(sys.executable).parent)]
    for site in site_packages():
        bin_dir = Path(site).parents[2] / "bin"  # <venv>/lib/pythonX.Y/site-packages
        if bin_dir.is_dir():
            dirs.append(str(bin_dir))
    return list(dict.fromkeys(dirs))


def run_without_bertflow(code: str, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None,
                         timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` (``args`` in ``sys.argv[1:]``) in ``python -I -S``: stdlib plus :func:`site_packages` only."""
    prelude = f"import sys\nsys.path.extend({site_packages()!r})\n"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
# ================================================================================ object store
# A real S3-compatible server (moto's standalone server, bound to 127.0.0.1) reached by the same client code
# a real bucket uses: pyarrow's S3FileSystem, pointed at it by AWS_ENDPOINT_URL. Credentials are dummies.
S3_SECRET = "bertflow-test-secret-0123456789"  # tests assert it never reaches MLflow, Prefect or a manifest
S3_ENV = {"AWS_ACCESS_KEY_ID": "bertflow-test-key", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def moto_server_cmd(port: int) -> list[str]:
    """moto's S3-compatible HTTP server on 127.0.0.1:``port`` (the ``moto[server]`` test extra)."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on the test S3 server: ``uri("lake/")`` names a prefix, ``fs`` reaches it as pyarrow does."""

    name: str
    endpoint: str

    @property
    def fs(self):
        import pyarrow.fs as pafs

        host = self.endpoint.split("://", 1)[1]
        return pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1",
                                 access_key=S3_ENV["AWS_ACCESS_KEY_ID"], secret_key=S3_SECRET)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def upload(self, local: Path, prefix: str) -> str:
        """Copy every file under ``local`` to ``prefix`` (keys mirror the relative paths); returns its URI."""
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = f"{self.name}/{prefix.strip('/')}/{path.relative_to(local).as_posix()}"
            with self.fs.open_output_stream(key) as out:
                out.write(path.read_bytes())
        return self.uri(prefix)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (directory markers left out)."""
        import pyarrow.fs as pafs

        base = f"{self.name}/{prefix.strip('/')}".rstrip("/")
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(self.name) + 1:] for i in infos if i.type == pafs.FileType.File)


def make_bucket(endpoint: str, name: str) -> Bucket:
    import pyarrow.fs as pafs

    bucket = Bucket(name, endpoint)
    host = endpoint.split("://", 1)[1]
    pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1", allow_bucket_creation=True,
                      access_key=S3_ENV["AWS_ACCESS_KEY_ID"], secret_key=S3_SECRET).create_dir(name)
    return bucket


def make_hive_lake(root: Path, days: int, rows: int, seed: int = 0, files_per_day: int = 1,
                   row_group_rows: int | None = None, start: str = "2026-11-01") -> list[str]:
    """A hive lake ``dt=<day>/part-<i>.parquet`` of (id, lang, text) rows; returns the day values."""
    import datetime

    rng = random.Random(seed)
    first = datetime.date.fromisoformat(start)
    day_values, next_id = [], 0
    for d in range(days):
        day = (first + datetime.timedelta(days=d)).isoformat()
        day_values.append(day)
        for f in range(files_per_day):
            ids = list(range(next_id, next_id + rows))
            next_id += rows
            table = pa.table({"id": ids, "lang": [rng.choice(["en", "fr", None]) for _ in ids],
                              "text": [sentence(rng) for _ in ids]})
            path = root / f"dt={day}" / f"part-{f}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, row_group_size=row_group_rows)
    return day_values
# ================================================================================ the command line as a user meets it
# `bertflow` in a subprocess, as `make demo` runs it: with or without a terminal, in a user's environment
# (Prefect's own temporary server, default log level), and readers for what it printed.
TEST_ONLY_ENV = ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "TOKENIZERS_PARALLELISM")
ANSI = r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07"  # colours, cursor moves, erase-line, window titles
WARNING_LINE = r"Warning\b|\bWARNING\b|\bwarn(ing)?:"


@dataclass(frozen=True)
class CliRun:
    """One `bertflow pipeline` run of the ``cli_pipelines`` fixture."""

    lr: float  # its finetune.lr
    terminal: bool  # run on a pseudo-terminal
    output: str  # everything it printed (stdout and stderr, in order; on a terminal, with its control codes)
    summary: dict  # its <workspace>/last_run.json


def user_env(**extra: str) -> dict[str, str]:
    """This environment without the settings the test session adds for itself (``extra`` on top)."""
    env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY_ENV}
    env.update(extra)
    return env


def bertflow_cli(args: Sequence[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m bertflow ARGS`` without a terminal; stdout and stderr merged, in the order written."""
    return subprocess.run([sys.executable, "-m", "bertflow", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def bertflow_in_terminal(args: Sequence[str], env: dict[str, str], cols: int = 160, rows: int = 50,
                         timeout: float = 600) -> tuple[int, str]:
    """``python -m bertflow ARGS`` on a pseudo-terminal of ``cols`` x ``rows``: exit code and every byte it drew."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "bertflow", *args], cwd=REPO, env={**env, "TERM": "xterm-256color"},
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


def plain(output: str) -> str:
    """Terminal output without colours and cursor control; each redraw of a live line becomes a line of its own."""
    import re

    return re.sub(ANSI, "", output).replace("\r\n", "\n").replace("\r", "\n")


def warning_lines(output: str) -> list[str]:
    """The lines of ``output`` that report a warning (Python warnings, WARNING log records)."""
    import re

    return [line for line in plain(output).splitlines() if re.search(WARNING_LINE, line)]
