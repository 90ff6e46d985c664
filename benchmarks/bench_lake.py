"""Scoring a data lake where it lives: ``--where`` pushdown, and an object store vs the local disk.

One process, one tiny model (``bench_score``'s ``tiny``: BERT 2 x 64, 2 labels), one hive lake of
``--days`` daily partitions (``dt=YYYY-MM-DD/part-0.parquet``, ``--rows`` rows each). Rounds alternate
the runs (local and S3 swap places every round, as the load of a shared box drifts); the script
prints each figure's median and the ratios:

- **pushdown**: the whole lake vs ``--where "dt = '<one day>'"`` (local disk): wall time of
  ``bert_core.score.stage.run`` (model load, plan, scoring, manifest) and the manifest's
  ``bytes_read``. Goal: >= 20x faster, <= 1/25 of the bytes.
- **object store**: the whole lake from ``s3://bench/lake/`` to ``s3://bench/scored/`` on moto's
  S3-compatible server (``moto[server]``, a test extra) on 127.0.0.1, reached by pyarrow's S3FileSystem
  as a real bucket would be, vs local disk to local disk: rows/s. Goal: S3 >= 80% of local.

Example::

    python benchmarks/bench_lake.py --days 30 --rows 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_score import build_model, load_sentences  # the sibling benchmark: the same tiny model and texts

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def write_lake(root: Path, days: int, rows: int, texts: list[str]) -> list[str]:
    """``days`` daily partitions of ``rows`` (id, lang, text) rows; returns the day values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    first = datetime.date(2026, 11, 1)
    values = []
    for d in range(days):
        day = (first + datetime.timedelta(days=d)).isoformat()
        values.append(day)
        ids = range(d * rows, (d + 1) * rows)
        table = pa.table({"id": list(ids), "lang": [rng.choice(["en", "fr", "de"]) for _ in ids],
                          "text": [texts[i % len(texts)] for i in ids]})
        (root / f"dt={day}").mkdir(parents=True)
        pq.write_table(table, root / f"dt={day}" / "part-0.parquet", row_group_size=rows // 4 or 1)
    return values


@contextlib.contextmanager
def moto_server():
    """moto's S3 server on a free 127.0.0.1 port; yields its endpoint URL."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **S3_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start (is moto[server] installed?)")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def upload(local: Path, endpoint: str, bucket: str, prefix: str) -> None:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", allow_bucket_creation=True)
    fs.create_dir(bucket)
    pafs.copy_files(str(local), f"{bucket}/{prefix}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def remove(out: str) -> None:
    """Start every timed run from an empty output (else the commit records make it skip everything)."""
    from bertflow.bert_core.storage import locate

    loc = locate(out)
    if loc.remote:
        with contextlib.suppress(FileNotFoundError, OSError):
            loc.fs.delete_dir_contents(loc.path, missing_dir_ok=True)
    else:
        shutil.rmtree(loc.path, ignore_errors=True)


def timed(cfg, model: Path, out: str) -> dict:
    from bertflow.bert_core.score.stage import run

    remove(out)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run(cfg, model, out)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = result.metrics
    return {"seconds": seconds, "cpu_s": cpu, "rows": m["rows_in"], "rows_per_s": m["rows_in"] / seconds,
            "bytes_read": m["bytes_read"], "files": m["files"], "files_pruned": m["files_pruned"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rows", type=int, default=2000, help="rows per daily partition")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from bertflow.bert_core.score.config import ScoreConfig

    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp, moto_server() as endpoint:
        work = Path(tmp)
        texts, source = load_sentences(5000)
        model = build_model("tiny", work / "model", texts, None)
        days = write_lake(work / "lake", args.days, args.rows, texts)
        lake_mb = sum(p.stat().st_size for p in (work / "lake").rglob("*.parquet")) / 1e6
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        upload(work / "lake", endpoint, "bench", "lake")
        day = days[len(days) // 2]
        base = dict(device="cpu", batch_size=64, max_length=128)
        runs: dict[str, list[dict]] = {"all": [], "one_day": [], "s3_all": []}
        warm = ScoreConfig(input=str(work / "lake"), where=f"dt = '{day}'", **base)
        timed(warm, model, str(work / "warm"))  # loads torch, the tokenizer and the S3 client once
        jobs = {"all": (ScoreConfig(input=str(work / "lake"), **base), str(work / "out")),
                "one_day": (ScoreConfig(input=str(work / "lake"), where=f"dt = '{day}'", **base),
                            str(work / "out-day")),
                "s3_all": (ScoreConfig(input="s3://bench/lake/", **base), "s3://bench/scored/")}
        for r in range(args.repeats):
            order = ["all", "one_day", "s3_all"] if r % 2 == 0 else ["s3_all", "one_day", "all"]  # load drifts: ABBA
            for name in order:
                cfg, out = jobs[name]
                runs[name].append(timed(cfg, model, out))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f}s" for k, v in runs.items()), flush=True)

    med = {k: {f: statistics.median(x[f] for x in v) for f in ("seconds", "cpu_s", "rows_per_s", "bytes_read")}
           for k, v in runs.items()}
    speedup = med["all"]["seconds"] / med["one_day"]["seconds"]
    bytes_ratio = med["one_day"]["bytes_read"] / med["all"]["bytes_read"]
    s3_share = med["s3_all"]["rows_per_s"] / med["all"]["rows_per_s"]
    # each round's S3 and local runs are adjacent in time: their ratio is less exposed to the box's load drifting
    paired = statistics.median(s["rows_per_s"] / a["rows_per_s"] for s, a in zip(runs["s3_all"], runs["all"]))
    cpu_share = med["all"]["cpu_s"] / med["s3_all"]["cpu_s"]
    print(f"\nlake: {args.days} daily partitions x {args.rows} rows = {args.days * args.rows} rows, "
          f"{lake_mb:.1f} MB Parquet; texts: {source}; model: tiny (BERT 2 x 64), CPU")
    for k, label in (("all", "whole lake, local"), ("one_day", f"--where \"dt = '{day}'\", local"),
                     ("s3_all", "whole lake, S3 (moto, loopback)")):
        v = runs[k]
        each = ", ".join(f"{x['seconds']:.2f}" for x in v)
        print(f"{label:38s} {med[k]['seconds']:7.2f} s ({med[k]['cpu_s']:6.2f} CPU s)  "
              f"{med[k]['rows_per_s']:6.0f} rows/s  "
              f"{med[k]['bytes_read'] / 1e6:8.3f} MB read   (runs: {each} s; "
              f"files {v[0]['files']:.0f}, pruned {v[0]['files_pruned']:.0f})")
    print(f"pushdown: {speedup:.1f}x faster (goal >= 20x), {bytes_ratio:.4f} of the bytes = 1/{1 / bytes_ratio:.0f} "
          f"(goal <= 1/25)")
    print(f"object store: S3 at {100 * s3_share:.0f}% of local rows/s (goal >= 80%); median of the rounds' paired "
          f"ratios {100 * paired:.0f}%; our process's CPU time, local / S3: {100 * cpu_share:.0f}%")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med, "speedup": speedup, "bytes_ratio": bytes_ratio,
                                         "s3_share": s3_share, "s3_share_paired": paired, "cpu_share": cpu_share},
                                        indent=2))


if __name__ == "__main__":
    main()
