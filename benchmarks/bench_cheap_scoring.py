"""Cheap bulk scoring on CPUs: rows/s and accuracy of ours (torch fp32, ONNX fp32, ONNX int8) vs transformers' pipeline.

Same rows, same process, alternating, medians of ``--repeats`` runs (issue 21):

- ``pipeline``: ``transformers.pipeline("text-classification")`` over a Python list, fp32, torch's default
  threads, the best of batch sizes 64 and 256 (each repeat runs both);
- ``torch`` / ``onnx`` / ``onnx-int8``: our ``score`` stage (``bert_core.score.stage.run``, Parquet lake in,
  scored Parquet out) with ``score.backend`` set, default threads (every usable core);
- ``--student DIR`` (a distilled student, when there is one): ``student torch`` and ``student onnx-int8``.

rows/s excludes loading the model for every contender (the pipeline is built, and ours loaded, before the
clock starts); the ONNX backends' one-off export, quantization and parity gate are timed apart
(``prepare_seconds``, the first run) and cached in ``--workdir`` for the timed runs. Accuracy is each
contender's on the same labelled rows; the ONNX rows also carry their parity gate's figures. Goals:
onnx-int8 >= 4x the pipeline within 1.0 point of torch fp32; student int8 >= 10x within 2.0 points of the
teacher.

``--model``: a fine-tuned sequence classifier, e.g. MiniLM-L6 fine-tuned on SST-2 by
``benchmarks/quality_finetune.py --task sst2`` (``OUT/sst2/model``). ``--rows``: a labelled TSV, CSV or Parquet
file (text column ``sentence`` or ``text``, ``label``); default: the fine-tune's validation predictions
beside the model (``predictions.parquet``), else ``../shared/data/sst2/train.tsv``. Examples::

    python benchmarks/bench_cheap_scoring.py --model OUT/sst2/model --limit 5000 --json cheap.json
    python benchmarks/bench_cheap_scoring.py --model OUT/sst2/model --student OUT/student/model
    python benchmarks/bench_cheap_scoring.py --model /tmp/minilm-random-head --limit 300 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GOALS = {"onnx-int8": (4.0, 1.0), "student onnx-int8": (10.0, 2.0)}  # (x the pipeline, points of accuracy)


# ---------------------------------------------------------------- data ----------------------------------------------
def load_rows(path: Path, limit: int, text_column: str | None, label_column: str) -> tuple[list[str], list[str]]:
    """The first ``limit`` (text, label) rows of a labelled file, read by the fine-tune stage's own reader."""
    import pyarrow.parquet as pq

    from bertflow.bert_core.finetune.readers import read_examples

    if text_column is None:
        names = pq.read_schema(path).names if path.suffix == ".parquet" else \
            path.read_text(encoding="utf-8").split("\n", 1)[0].replace(",", "\t").split("\t")
        text_column = "sentence" if "sentence" in names else "text"
    examples = read_examples(path, "sequence", text_column=text_column, label_column=label_column, role="rows")
    return [t.strip() for t in examples.texts[:limit]], [str(y) for y in examples.labels[:limit]]


def write_lake(texts: list[str], lake: Path, files: int = 4) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake.mkdir(parents=True, exist_ok=True)
    step = -(-len(texts) // files)
    for f, start in enumerate(range(0, len(texts), step)):
        chunk = texts[start:start + step]
        pq.write_table(pa.table({"id": list(range(start, start + len(chunk))), "text": chunk}),
                       lake / f"part-{f:03d}.parquet")


def accuracy(predicted: list[str | None], gold: list[str]) -> float:
    return 100.0 * sum(p == g for p, g in zip(predicted, gold)) / len(gold)


# ---------------------------------------------------------------- contenders ----------------------------------------
def time_pipeline(model_dir: Path, texts: list[str], batch_size: int, max_length: int) -> tuple[float, list[str]]:
    """rows/s of transformers' text-classification pipeline (fp32, CPU, torch's default threads) and its labels."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), batch_size=batch_size,
                    device="cpu")
    pipe(texts[: 2 * batch_size], truncation=True, max_length=max_length)  # warm-up
    t0 = time.perf_counter()
    out = pipe(texts, truncation=True, max_length=max_length)
    seconds = time.perf_counter() - t0
    del pipe
    return len(texts) / seconds, [o["label"] for o in out]


def score_config(lake: Path, backend: str, args):
    from bertflow.bert_core.score.config import ScoreConfig

    return ScoreConfig(input=str(lake), backend=backend, batch_size=args.batch_size, max_length=args.max_length,
                       device="cpu", cpu_threads=args.threads, parity_rows=args.parity_rows,
                       min_agreement=args.min_agreement)


def time_ours(model_dir: Path, lake: Path, backend: str, work: Path, args) -> tuple[float, list[str | None], dict]:
    """rows/s of our score stage on ``backend`` (model loaded before the clock starts), its labels and manifest."""
    import pyarrow.dataset as ds

    from bertflow.bert_core.score.model import load_classifier
    from bertflow.bert_core.score.stage import read_run_manifest, run

    cfg = score_config(lake, backend, args)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cache = work / "onnx"  # one cache for every contender: files per model digest
    load_classifier(model_dir, cfg, cache if backend != "torch" else None)
    t0 = time.perf_counter()
    result = run(cfg, model_dir, out, cache_dir=cache)
    seconds = time.perf_counter() - t0
    m = result.metrics
    assert m["files_failed"] == 0 and m["rows_scored"] + m["rows_error"] == m["rows_in"], m
    table = ds.dataset(sorted(str(p) for p in out.glob("*.parquet")), format="parquet").to_table(
        columns=["id", "label"]).sort_by("id")
    manifest = read_run_manifest(out)
    shutil.rmtree(out, ignore_errors=True)
    return m["rows_in"] / seconds, table.column("label").to_pylist(), manifest


def prepare(model_dir: Path, lake: Path, backend: str, work: Path, args) -> dict:
    """The first run of a backend: export, quantization and the parity gate (cached for the timed runs)."""
    t0 = time.perf_counter()
    _, _, manifest = time_ours(model_dir, lake, backend, work, args)
    return {"prepare_seconds": round(time.perf_counter() - t0, 1), "parity": manifest.get("parity")}


# ---------------------------------------------------------------- main ----------------------------------------------
def contenders(args) -> list[tuple[str, Path, str]]:
    """(name, model dir, backend): ``pipeline`` is transformers'; the rest are ours."""
    out = [("pipeline", args.model, "pipeline"), ("torch", args.model, "torch"), ("onnx", args.model, "onnx"),
           ("onnx-int8", args.model, "onnx-int8")]
    if args.student:
        out += [("student torch", args.student, "torch"), ("student onnx-int8", args.student, "onnx-int8")]
    return out


def bench(args, work: Path, texts: list[str], gold: list[str]) -> dict:
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    write_lake(texts, lake)
    runs: dict[str, list[float]] = {name: [] for name, _, _ in contenders(args)}
    acc: dict[str, float] = {}
    extra: dict[str, dict] = {}
    for name, model_dir, backend in contenders(args):
        if backend != "pipeline":
            extra[name] = prepare(model_dir, lake, backend, work, args)
            print(f"  prepared {name}: {extra[name]['prepare_seconds']} s", flush=True)
    for r in range(args.repeats):
        for name, model_dir, backend in contenders(args):
            if backend == "pipeline":
                best = None
                for bs in args.peer_batch_sizes:
                    rate, labels = time_pipeline(model_dir, texts, bs, args.max_length)
                    runs.setdefault(f"pipeline bs={bs}", []).append(rate)
                    best = max(best or (0.0, None), (rate, labels), key=lambda x: x[0])
                rate, labels = best
            else:
                rate, labels, _ = time_ours(model_dir, lake, backend, work, args)
            runs[name].append(rate)
            acc.setdefault(name, accuracy(labels, gold))
            print(f"  repeat {r}: {name:18s} {rate:8,.0f} rows/s  accuracy {acc[name]:.2f}", flush=True)
    peer = statistics.median(runs["pipeline"])
    teacher = acc.get("torch")
    table = []
    for name, _, backend in contenders(args):
        rate = statistics.median(runs[name])
        row = {"contender": name, "rows_per_s": round(rate, 1), "runs": [round(x, 1) for x in runs[name]],
               "vs_pipeline": round(rate / peer, 2), "accuracy": round(acc[name], 2),
               "accuracy_vs_torch_fp32": round(acc[name] - teacher, 2) if teacher is not None else None}
        if name in extra:
            row.update(extra[name])
        if name in GOALS:
            speed, points = GOALS[name]
            row["goal"] = f">= {speed:g}x the pipeline, within {points:g} points of torch fp32"
            row["goal_met"] = bool(rate / peer >= speed and teacher - acc[name] <= points)
        table.append(row)
    return {"rows": len(texts), "repeats": args.repeats, "pipeline_batch_sizes": args.peer_batch_sizes,
            "pipeline_runs": {k: [round(x, 1) for x in v] for k, v in runs.items() if k.startswith("pipeline bs=")},
            "table": table}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a fine-tuned sequence classifier (HF directory)")
    ap.add_argument("--student", type=Path, help="a distilled student of --model: adds its torch and onnx-int8 rows")
    ap.add_argument("--rows", type=Path, help="labelled TSV/CSV/Parquet rows (default: predictions.parquet beside "
                                              "--model, else ../shared/data/sst2/train.tsv)")
    ap.add_argument("--limit", type=int, default=5000, help="rows to score (the first N of --rows)")
    ap.add_argument("--text-column", default=None, help="default: sentence, else text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="ours")
    ap.add_argument("--peer-batch-sizes", default="64,256")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="ours (0: every usable core); the pipeline keeps torch's")
    ap.add_argument("--parity-rows", type=int, default=512, help="score.parity_rows of the ONNX gate")
    ap.add_argument("--min-agreement", type=float, default=0.97,
                    help="score.min_agreement of the gate (a smoke run on a random head may need 0)")
    ap.add_argument("--workdir", default=None, help="keep the lake and the ONNX cache here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=Path("cheap-scoring.json"), help="where the results go")
    args = ap.parse_args(argv)
    args.peer_batch_sizes = [int(x) for x in args.peer_batch_sizes.split(",") if x]
    rows = args.rows
    if rows is None:
        beside = args.model.parent / "predictions.parquet"
        rows = beside if beside.is_file() else SHARED / "sst2" / "train.tsv"

    import onnxruntime
    import torch
    import transformers

    texts, gold = load_rows(rows, args.limit, args.text_column, args.label_column)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-cheap-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.model import cpu_threads

    header = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "model": str(args.model),
              "student": str(args.student) if args.student else None, "rows_file": str(rows),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(),
              "usable_cores": len(os.sched_getaffinity(0)), "pipeline_threads": torch.get_num_threads(),
              "ours_threads": cpu_threads(ScoreConfig(cpu_threads=args.threads)),
              "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    print(f"# bench_cheap_scoring {header}", flush=True)
    print(f"# {len(texts):,} labelled rows from {rows}", flush=True)
    try:
        result = bench(args, work, texts, gold)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    header["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(f"{'contender':18s} {'rows/s':>9s} {'x pipeline':>10s} {'accuracy':>9s} {'vs fp32':>8s}  goal")
    for row in result["table"]:
        delta = "" if row["accuracy_vs_torch_fp32"] is None else f"{row['accuracy_vs_torch_fp32']:+.2f}"
        goal = "" if "goal" not in row else f"{'MET' if row['goal_met'] else 'NOT MET'} ({row['goal']})"
        print(f"{row['contender']:18s} {row['rows_per_s']:9,.0f} {row['vs_pipeline']:9.2f}x {row['accuracy']:9.2f} "
              f"{delta:>8s}  {goal}")
    for row in result["table"]:
        if row.get("parity"):
            p = row["parity"]
            print(f"gate {row['contender']}: agreement {p['agreement']:.2%}, max |dp| {p['max_abs_delta']:.4f} "
                  f"on {p['rows']} rows of {p['source']}; one-off export/quantize/gate {row['prepare_seconds']} s")
    summary = {"header": header, **result}
    args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
