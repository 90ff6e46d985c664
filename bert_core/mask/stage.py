"""Masked-data generation stage: corpus + tokenizer -> shuffled, masked (or maskable) Parquet shards.

Two passes, both spread over a process pool and independent of its size:

1. per work unit (whole documents of one corpus shard, ~``unit_mb`` of text): tokenize,
   build rows (``full`` or ``nsp``), mask (static), shuffle, and write one uncompressed
   Arrow part per dupe (:mod:`bert_core.mask.worker`);
2. per output shard: take a random share of every part and interleave the shares at
   random (:mod:`bert_core.mask.shards`) - a global shuffle in bounded memory.

Memory is bounded by the unit and shard sizes, never by the corpus or ``dupe_factor``.
The output directory appears atomically with its manifest (format: ``schema.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.ingest.reader import open_corpus
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.mask.corpus import plan_units
from bertflow.bert_core.mask.shards import plan_shards, write_shard
from bertflow.bert_core.mask.tokenizer import load_tokenizer, word_starts_of
from bertflow.bert_core.mask.worker import UnitJob, UnitResult, process_unit
from bertflow.bert_core.orphans import exit_with, worker_start_method
from bertflow.bert_core.stageio import ProgressFn, StageResult, atomic_dir, report, write_manifest

PARTS_DIR = ".parts"


def run(cfg: MaskConfig, corpus_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
        on_progress: ProgressFn | None = None) -> StageResult:
    """Generate masked data from ``corpus_dir`` with the tokenizer in ``tokenizer_dir`` into ``out_dir``."""
    started = time.perf_counter()
    corpus = open_corpus(corpus_dir)
    tokenizer, info = load_tokenizer(tokenizer_dir)
    units = plan_units(corpus, cfg.unit_mb)
    if not units:
        raise InputError(f"corpus {corpus.path} holds no documents (re-run the ingest stage)")
    with atomic_dir(out_dir) as tmp, _pool(cfg.num_workers, len(units)) as pool:
        parts_dir = tmp / PARTS_DIR
        parts_dir.mkdir()
        # largest units first, so no worker is left with a big one at the end (results are sorted back)
        jobs = [UnitJob(u, cfg, str(tokenizer_dir), str(parts_dir)) for u in sorted(units, key=lambda u: -u.chars)]
        total_steps = len(jobs) + 1  # the work units, then writing the shards
        tokens_done = 0

        def unit_done(done: int, result: UnitResult) -> None:
            nonlocal tokens_done
            tokens_done += result.tokens
            report(on_progress, done, total_steps, "work units",
                   tokens_per_s=tokens_done / max(time.perf_counter() - started, 1e-9))

        results: list[UnitResult] = sorted(_map(pool, process_unit, jobs, unit_done), key=lambda r: r.unit)
        t_units = time.perf_counter()
        totals = _totals(results)
        if totals["sequences"] == 0:
            raise InputError(_nothing_made(corpus.path, totals, cfg))
        parts = [p for r in results for p in r.parts]
        shard_jobs = plan_shards(parts, cfg.rows_per_shard, cfg.seed, str(parts_dir), str(tmp),
                                 cfg.row_group_rows, cfg.compression)
        shards = sorted(_map(pool, write_shard, shard_jobs, lambda done, result: None))
        shutil.rmtree(parts_dir)
        t_shards = time.perf_counter()
        elapsed = time.perf_counter() - started
        manifest = _manifest(cfg, corpus, info, tokenizer, shards, totals, units, elapsed)
        write_manifest(tmp, manifest)
    metrics = {
        "sequences": float(totals["sequences"]),
        "tokens": float(totals["tokens"]),
        "masked_tokens": float(totals["masked_tokens"]),
        "shards": float(len(shards)),
        "docs_skipped": float(totals["docs_skipped"]),
        "source_tokens": float(totals["source_tokens"]),
        "tokens_per_s": totals["tokens"] / elapsed if elapsed > 0 else 0.0,
        "source_tokens_per_s": totals["source_tokens"] / elapsed if elapsed > 0 else 0.0,
        "unk_rate": totals["unk_tokens"] / max(totals["source_tokens"], 1),
        "seconds": elapsed,
    }
    report(on_progress, total_steps, total_steps, "work units", tokens_per_s=metrics["tokens_per_s"])
    if cfg.recipe == "nsp":
        metrics["random_next_rate"] = totals["random_next"] / max(totals["sequences"], 1)
    details = {"manifest": str(Path(out_dir) / "manifest.json"), "counts": manifest["counts"],
               "warnings": manifest["warnings"], "unit_seconds": _step_seconds(results),
               "phase_seconds": {"units": round(t_units - started, 3), "shards": round(t_shards - t_units, 3)}}
    return StageResult("mask", str(out_dir), metrics, details)


def _totals(results: list[UnitResult]) -> dict[str, int]:
    keys = ["docs", "docs_skipped_short", "docs_skipped_sentences", "source_tokens", "unk_tokens", "sequences",
            "tokens", "masked_tokens", "random_next", "forced_true_next", "truncated_pairs"]
    totals = {k: sum(getattr(r, k) for r in results) for k in keys}
    totals["docs_skipped"] = totals["docs_skipped_short"] + totals["docs_skipped_sentences"]
    return totals


def _step_seconds(results: list[UnitResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        for step, s in r.seconds.items():
            out[step] = out.get(step, 0.0) + s
    return {k: round(v, 3) for k, v in out.items()}


def _nothing_made(corpus_dir: str | Path, totals: dict[str, int], cfg: MaskConfig) -> str:
    why = f"{totals['docs']} document(s) read, {totals['docs_skipped_short']} with fewer than 2 tokens"
    if cfg.recipe == "nsp":
        why += f", {totals['docs_skipped_sentences']} with fewer than 2 sentences (nsp needs sentence boundaries)"
    return f"no sequences generated from corpus {corpus_dir}: {why}; check the corpus or use mask.recipe=full"


def _manifest(cfg, corpus, info, tokenizer, shards, totals, units, elapsed) -> dict[str, Any]:
    warnings = []
    unk_rate = totals["unk_tokens"] / max(totals["source_tokens"], 1)
    if unk_rate > 0.05:
        warnings.append(f"{unk_rate:.1%} of tokens are [UNK]: is the tokenizer made for this corpus?")
    if totals["forced_true_next"]:
        warnings.append(f"{totals['forced_true_next']} nsp pair(s) made true-next because their work unit holds a "
                        "single document (raise mask.unit_mb)")
    manifest: dict[str, Any] = {
        "stage": "mask",
        "recipe": cfg.recipe,
        "masking": cfg.masking,
        "full_mode": cfg.full_mode if cfg.recipe == "full" else None,
        "full_packing": cfg.full_packing if cfg.recipe == "full" else None,
        "max_seq_length": cfg.max_seq_length,
        "vocab_size": info.vocab_size,
        "id_type": info.id_type,
        "special_ids": info.special_ids,
        "num_rows": totals["sequences"],
        "num_tokens": totals["tokens"],
        "num_masked_tokens": totals["masked_tokens"],
        "shards": [{"file": name, "rows": rows} for name, rows in shards],
        "masked_lm_prob": cfg.masked_lm_prob,
        "max_predictions_per_seq": cfg.max_predictions_per_seq,
        "whole_word": cfg.whole_word,
        "dupe_factor": cfg.dupe_factor,
        "tokenizer_fingerprint": info.fingerprint,
        "corpus_fingerprint": corpus.fingerprint,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "counts": {k: v for k, v in totals.items()} | {"work_units": len(units)},
        "warnings": warnings,
        "elapsed_s": round(elapsed, 3),
        "versions": _versions(),
    }
    if cfg.whole_word:
        manifest["continuation_ids"] = np.flatnonzero(~word_starts_of(tokenizer, info)).tolist()
    return manifest


def _versions() -> dict[str, str]:
    import pyarrow
    import tokenizers

    return {"numpy": np.__version__, "pyarrow": pyarrow.__version__, "tokenizers": tokenizers.__version__}


class _Inline:
    """Stands in for a pool when one worker is asked for: runs jobs in this process."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pool(num_workers: int, n_jobs: int):
    workers = min(num_workers, n_jobs)
    if workers <= 1:
        return _Inline()
    # exit_with: the workers end when this process is killed, instead of waiting for work forever
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(worker_start_method()),
                               initializer=exit_with,
                               initargs=(os.getpid(),))


def _map(pool, fn: Callable, jobs: Iterable, on_done: Callable[[int, Any], None]) -> list:
    """Results of ``fn`` over ``jobs`` (completion order); ``on_done(n, result)`` after each."""
    out = []
    if pool is None:
        for job in jobs:
            out.append(fn(job))
            on_done(len(out), out[-1])
        return out
    futures = [pool.submit(fn, job) for job in jobs]
    try:
        for fut in as_completed(futures):
            out.append(fut.result())
            on_done(len(out), out[-1])
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return out
