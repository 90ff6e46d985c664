"""Vocabulary stage: an ingest corpus -> a WordPiece tokenizer directory (Hugging Face format).

Entry point :func:`run`; :func:`tokenizer_fingerprint` identifies a tokenizer directory
for downstream stages' cache keys and manifests.
"""

from __future__ import annotations

import time
from pathlib import Path

import tokenizers

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.reader import Corpus, iter_batches, open_corpus
from bertflow.bert_core.stageio import ProgressFn, StageResult, atomic_dir, file_digest, report, write_manifest
from bertflow.bert_core.vocab.config import VocabConfig
from bertflow.bert_core.vocab.corpus import complete_holdout, iter_training_texts, plan_selection
from bertflow.bert_core.vocab.coverage import coverage
from bertflow.bert_core.vocab.tokenizer import SPECIAL_TOKENS, canonical_ids, finish, new_tokenizer, save_hf_dir, wordpiece_trainer

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 of the directory's ``vocab.txt`` (the token <-> id mapping every later stage bakes in).

    Not ``stageio.model_dir_digest``: this bare digest of one file is persisted in the vocab and
    masked-data manifests (a format contract) and feeds pretraining's data identity, so a new
    format would make every training directory look changed after an upgrade.
    """
    vocab = Path(tokenizer_dir) / "vocab.txt"
    if not vocab.is_file():
        raise InputError(f"{tokenizer_dir} is not a tokenizer directory: vocab.txt is missing (run the vocab stage first)")
    return file_digest(vocab)


def run(cfg: VocabConfig, corpus_dir: str | Path, out_dir: str | Path, on_progress: ProgressFn | None = None) -> StageResult:
    """Train a WordPiece vocabulary on the corpus (minus a hold-out) and save the tokenizer directory."""
    started = time.perf_counter()
    corpus = open_corpus(corpus_dir)
    sel = plan_selection(corpus, cfg)
    tok = new_tokenizer(cfg.lowercase)
    trainer = wordpiece_trainer(cfg.vocab_size, cfg.min_frequency, cfg.limit_alphabet)
    expected = min(corpus.docs, cfg.max_docs or corpus.docs)

    def batches():
        for texts in iter_training_texts(corpus, sel, cfg.batch_rows):
            # paragraphs, not whole documents: the same words (the pre-tokenizer splits on
            # whitespace anyway), and ~20% less trainer CPU than book-sized sequences
            yield [p for text in texts for p in text.split("\n\n")]
            report(on_progress, sel.train_docs, expected, "docs")

    tok.train_from_iterator(batches(), trainer=trainer, length=expected)
    if sel.train_docs == 0:
        raise InputError(f"no documents to train the vocabulary on in {corpus.path} (all held out or capped away)")
    finish(canonical_ids(tok))
    train_seconds = time.perf_counter() - started
    if sel.capped:
        complete_holdout(corpus, sel)
    eval_texts, eval_on = sel.holdout_texts, "holdout"
    if not eval_texts:  # a corpus too small to hold anything out: say so, measure on training text
        eval_texts, eval_on = _first_texts(corpus, cfg), "train_sample"
    stats = coverage(tok, eval_texts)

    with atomic_dir(out_dir) as tmp:
        save_hf_dir(tok, tmp, cfg.lowercase, cfg.model_max_length)
        fingerprint = tokenizer_fingerprint(tmp)
        manifest = {
            "stage": "vocab",
            "config": to_dict(cfg),
            "corpus_dir": str(corpus.path),
            "corpus_fingerprint": corpus.fingerprint,
            "tokenizer_fingerprint": fingerprint,
            "vocab_size": tok.get_vocab_size(),
            "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
            "files": list(TOKENIZER_FILES),
            "training": {
                "corpus_docs": corpus.docs,
                "train_docs": sel.train_docs,
                "train_bytes": sel.train_bytes,
                "sample_threshold": sel.sample_threshold,
                "capped": sel.capped,
                "holdout_docs": sel.holdout_docs,
                "holdout_cutoff_doc_id": sel.holdout_cutoff,
                "seconds": round(train_seconds, 3),
            },
            "coverage": {"measured_on": eval_on, **stats},
            "versions": {"tokenizers": tokenizers.__version__},
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        write_manifest(tmp, manifest)
    final = Path(out_dir)
    metrics = {
        "vocab_size": tok.get_vocab_size(),
        "unk_rate": stats["unk_rate"],
        "tokens_per_word": stats["tokens_per_word"],
        "train_docs": sel.train_docs,
        "train_bytes": sel.train_bytes,
        "holdout_docs": sel.holdout_docs,
        "seconds": manifest["elapsed_s"],
    }
    details = {
        "manifest": str(final / "manifest.json"),
        "tokenizer_fingerprint": fingerprint,
        "corpus_fingerprint": corpus.fingerprint,
        "coverage_measured_on": eval_on,
    }
    return StageResult("vocab", str(final), {k: float(v) for k, v in metrics.items()}, details)


def _first_texts(corpus: Corpus, cfg: VocabConfig) -> list[str]:
    out: list[str] = []
    size = 0
    for batch in iter_batches(corpus.shards[0].path, ["text"], cfg.batch_rows):
        for text in batch.column(0).to_pylist():
            out.append(text[: cfg.holdout_eval_chars - size])
            size += len(out[-1])
            if size >= cfg.holdout_eval_chars:
                return out
    return out
