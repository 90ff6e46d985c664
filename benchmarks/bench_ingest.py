"""Ingestion throughput (MB/s of text) and peak RSS on the full shared Gutenberg corpus.

Ours: the ingest stage (decode + Gutenberg strip + NFC + control chars + whitespace +
dedup + sentence splitting + sharded Parquet) with ``--workers`` processes (default 2,
for a 2-core box). Peer: a naive single-process copy (gzip read, decode, write the raw
text to Parquet with pyarrow; no cleaning at all). Each run is a fresh subprocess so its
peak RSS (``resource.getrusage``) is its own; runs alternate and medians are compared.

    python benchmarks/bench_ingest.py [--reps 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUTENBERG = REPO.parent / "shared" / "data" / "gutenberg"
PATTERN = str(GUTENBERG / "*.txt.gz")


def child_ours(out: Path, workers: int) -> dict:
    from bertflow.bert_core.ingest.config import IngestConfig
    from bertflow.bert_core.ingest.stage import run

    t = time.perf_counter()
    result = run(IngestConfig(inputs=(PATTERN,), workers=workers), out)
    return {"seconds": time.perf_counter() - t, "text_bytes": result.metrics["text_bytes_in"], "docs": result.metrics["docs_out"]}


def child_peer(out: Path) -> dict:
    """The naive baseline: read each .gz, decode, write one Parquet file of raw texts."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    t = time.perf_counter()
    texts, sources, size = [], [], 0
    for path in sorted(GUTENBERG.glob("*.txt.gz")):
        data = gzip.open(path).read()
        size += len(data)
        texts.append(data.decode("utf-8", errors="replace"))
        sources.append(str(path))
    out.mkdir(parents=True)
    pq.write_table(pa.table({"source": sources, "text": texts}), out / "corpus.parquet", compression="zstd")
    return {"seconds": time.perf_counter() - t, "text_bytes": size, "docs": len(texts)}


def run_child(kind: str, out: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--workers", str(workers)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        stats = child_ours(Path(args.out), args.workers) if args.child == "ours" else child_peer(Path(args.out))
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # incl. imports and worker start-up
        stats.update(rss_mb=me.ru_maxrss / 1024, worker_rss_mb=kids.ru_maxrss / 1024, cpu_s=cpu)
        print(json.dumps(stats))
        return
    if not GUTENBERG.is_dir():
        raise SystemExit(f"needs the shared Gutenberg corpus at {GUTENBERG}")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    ours, peer = [], []
    try:
        for rep in range(max(3, args.reps)):
            ours.append(run_child("ours", work / f"ours{rep}", args.workers))
            peer.append(run_child("peer", work / f"peer{rep}", args.workers))
            o, p = ours[-1], peer[-1]
            print(f"  rep {rep + 1}: ours {o['text_bytes'] / o['seconds'] / 1e6:.1f} MB/s ({o['seconds']:.2f} s, {o['cpu_s']:.1f} CPU-s)   "
                  f"peer {p['text_bytes'] / p['seconds'] / 1e6:.1f} MB/s ({p['seconds']:.2f} s, {p['cpu_s']:.1f} CPU-s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text_mb = ours[0]["text_bytes"] / 1e6
    o_s, p_s = statistics.median(r["seconds"] for r in ours), statistics.median(r["seconds"] for r in peer)
    o_rss, o_wrss = max(r["rss_mb"] for r in ours), max(r["worker_rss_mb"] for r in ours)
    print(f"input: {PATTERN} ({int(ours[0]['docs'])} books, {text_mb:.1f} MB of text)")
    print(f"ours  (ingest stage, workers={args.workers}): median {o_s:.2f} s = {text_mb / o_s:.1f} MB/s; "
          f"peak RSS parent {o_rss:.0f} MB, each worker <= {o_wrss:.0f} MB (sum <= {o_rss + args.workers * o_wrss:.0f} MB)")
    print(f"peer  (naive gzip+decode+pyarrow, no cleaning, 1 process): median {p_s:.2f} s = {text_mb / p_s:.1f} MB/s; "
          f"peak RSS {max(r['rss_mb'] for r in peer):.0f} MB")
    o_cpu, p_cpu = statistics.median(r["cpu_s"] for r in ours), statistics.median(r["cpu_s"] for r in peer)
    print(f"ratio ours/peer time: {o_s / p_s:.2f}x wall; CPU-s medians {o_cpu:.1f} vs {p_cpu:.1f} "
          f"(ours: {text_mb / o_cpu:.1f} MB per CPU-second, so ~{2 * text_mb / o_cpu:.0f} MB/s is the ceiling on 2 idle cores)")


if __name__ == "__main__":
    main()
