"""Vocabulary building: our stage (Parquet corpus -> HF tokenizer dir) vs ``BertWordPieceTokenizer.train(files)``.

Same text, same settings: ~30 MB of the shared Gutenberg corpus is ingested once (not
timed); our stage trains on it minus its hold-out, and the peer trains on exactly those
training documents written out as one ``.txt`` file each. Runs alternate
(ours, peer, ours, peer, ...) and the medians are compared.

    python benchmarks/bench_vocab.py [--mb 30] [--reps 3] [--vocab-size 30522]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import struct
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.reader import open_corpus
from bertflow.bert_core.ingest.stage import run as ingest
from bertflow.bert_core.stageio import read_manifest
from bertflow.bert_core.vocab.config import VocabConfig
from bertflow.bert_core.vocab.stage import run as build_vocab
from bertflow.bert_core.vocab.tokenizer import SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "data" / "gutenberg"


def pick_books(target_bytes: int) -> list[Path]:
    """Books in name order until their text (gzip ISIZE) reaches ~5% over the target (cleaning removes ~5%)."""
    chosen, total = [], 0
    for book in sorted(GUTENBERG.glob("*.txt.gz")):
        with open(book, "rb") as fh:
            fh.seek(-4, 2)
            total += struct.unpack("<I", fh.read(4))[0]
        chosen.append(book)
        if total >= target_bytes * 1.05:
            break
    return chosen


def write_peer_files(corpus: Path, cutoff: str | None, out: Path) -> tuple[list[str], int]:
    """Our training documents (all but the hold-out), one .txt file each, for the peer."""
    out.mkdir(parents=True)
    files, size = [], 0
    for batch in open_corpus(corpus).iter_batches(["doc_id", "text"]):
        if cutoff is not None:
            batch = batch.filter(pc.greater(batch.column("doc_id"), cutoff))
        for doc_id, text in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist()):
            path = out / f"{doc_id}.txt"
            path.write_text(text, encoding="utf-8")
            files.append(str(path))
            size += len(text.encode("utf-8"))
    return files, size


def peer_train(files: list[str], cfg: VocabConfig, out: Path) -> set[str]:
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=cfg.lowercase)
    tok.train(
        files,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        limit_alphabet=cfg.limit_alphabet,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        wordpieces_prefix="##",
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save_model(str(out))
    return set(tok.get_vocab())


def cpu_seconds() -> float:
    """This process's user+system CPU time (all threads): steadier than wall time on a shared box."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=30.0, help="corpus size in MB of Gutenberg text")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each (>= 3)")
    ap.add_argument("--vocab-size", type=int, default=30522)
    args = ap.parse_args()
    if not GUTENBERG.is_dir():
        raise SystemExit(f"needs the shared Gutenberg corpus at {GUTENBERG}")
    cfg = VocabConfig(vocab_size=args.vocab_size)
    work = Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    try:
        books = pick_books(int(args.mb * 1e6))
        t = time.perf_counter()
        ingest(IngestConfig(inputs=tuple(str(b) for b in books)), work / "corpus")
        counts = read_manifest(work / "corpus")["counts"]
        print(f"corpus: {len(books)} books, {counts['text_bytes_out'] / 1e6:.1f} MB cleaned text (ingest {time.perf_counter() - t:.1f} s, not timed below)")

        build_vocab(cfg, work / "corpus", work / "ours")  # warm-up; tells which documents are held out
        training = read_manifest(work / "ours")["training"]
        files, peer_bytes = write_peer_files(work / "corpus", training["holdout_cutoff_doc_id"], work / "peer_txt")
        assert peer_bytes == training["train_bytes"], (peer_bytes, training["train_bytes"])
        print(f"training text: {peer_bytes / 1e6:.1f} MB in {len(files)} documents (hold-out: {training['holdout_docs']} docs), vocab_size={cfg.vocab_size}")

        ours_s, peer_s, ours_cpu, peer_cpu = [], [], [], []
        for rep in range(max(3, args.reps)):
            t, c = time.perf_counter(), cpu_seconds()
            result = build_vocab(cfg, work / "corpus", work / "ours")
            ours_s.append(time.perf_counter() - t)
            ours_cpu.append(cpu_seconds() - c)
            t, c = time.perf_counter(), cpu_seconds()
            peer_vocab = peer_train(files, cfg, work / "peer")
            peer_s.append(time.perf_counter() - t)
            peer_cpu.append(cpu_seconds() - c)
            print(f"  rep {rep + 1}: ours {ours_s[-1]:.2f} s ({ours_cpu[-1]:.1f} CPU-s)   peer {peer_s[-1]:.2f} s ({peer_cpu[-1]:.1f} CPU-s)")
        ours_vocab = set((work / "ours" / "vocab.txt").read_text(encoding="utf-8").split("\n")) - {""}
        overlap = len(ours_vocab & peer_vocab) / len(ours_vocab | peer_vocab)
        ours_med, peer_med = statistics.median(ours_s), statistics.median(peer_s)
        print(f"ours  (vocab stage, Parquet corpus, incl. hold-out stats + save): median {ours_med:.2f} s")
        print(f"peer  (BertWordPieceTokenizer.train(files) + save_model):        median {peer_med:.2f} s")
        print(f"ratio ours/peer: {ours_med / peer_med:.2f}x wall   (goal <= 1.2x); "
              f"CPU-s medians {statistics.median(ours_cpu):.1f} vs {statistics.median(peer_cpu):.1f} = "
              f"{statistics.median(ours_cpu) / statistics.median(peer_cpu):.2f}x")
        print(f"vocab: ours {len(ours_vocab)} tokens, peer {len(peer_vocab)}, Jaccard overlap {overlap:.4f}; "
              f"unk_rate {result.metrics['unk_rate']:.5f}, tokens/word {result.metrics['tokens_per_word']:.3f} on the hold-out")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
