"""Fine-tuning on a CPU: fp32 vs ``finetune.cpu_bf16`` (bf16 autocast), same steps, same data, one process.

    PYTHONPATH=. python benchmarks/bench_finetune_precision.py --task squad --steps 30 --repeats 3

Both run the stage's own ``run()`` (the pipeline's code path) on a seeded sample of a
``quality_finetune`` task for ``--steps`` optimizer steps, alternating fp32 and bf16; the figure is
training examples per second over the stage's ``train_seconds`` (training only: no loading, no
final fp32 evaluation, no export), median of the repeats, and the ratio bf16 / fp32. bf16 needs a
CPU with native bf16 (AVX-512 BF16 or AMX); elsewhere the script says so and stops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_finetune import TASKS, build_config, default_model_dir, device_name, subsample  # noqa: E402

from bertflow.bert_core.configtools import evolve  # noqa: E402
from bertflow.bert_core.cpu_bf16 import cpu_has_native_bf16  # noqa: E402
from bertflow.bert_core.finetune.stage import run  # noqa: E402


def time_run(cfg, model: Path, out: Path) -> float:
    """Training examples (windows, for QA) per second of the stage's training loop."""
    result = run(cfg, model, out)
    manifest = json.loads((Path(result.path) / "manifest.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    examples = cfg.max_steps * cfg.batch_size
    return examples / metrics["train_seconds"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="squad", choices=sorted(TASKS))
    ap.add_argument("--model", default=default_model_dir(), help="base HF BERT directory (default: the MiniLM package)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=800, help="training examples sampled (enough for --steps)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16 (AVX-512 BF16 or AMX): finetune.cpu_bf16 does not apply here")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-ft-precision-") as tmp:
        work = Path(tmp)
        base = build_config(args.task, Path(args.data), [])
        cfg = evolve(subsample(base, args.limit, work / "sample"), epochs=1, max_steps=args.steps, device="cpu",
                     budget_minutes=None, valid_fraction=0.1)
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        time_run(evolve(cfg, max_steps=3, cpu_bf16=False), Path(args.model), work / "warm")  # first-touch costs
        for r in range(args.repeats):
            for name, flag in (("fp32", False), ("bf16", True)):
                rate = time_run(evolve(cfg, cpu_bf16=flag), Path(args.model), work / f"{name}-{r}")
                rates[name].append(rate)
                print(f"  repeat {r}: {name}: {rate:.2f} examples/s", flush=True)
        fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
        report = {"task": args.task, "steps": args.steps, "batch_size": cfg.batch_size, "device": device_name(),
                  "fp32_examples_per_s": round(fp32, 2), "bf16_examples_per_s": round(bf16, 2),
                  "ratio_bf16_vs_fp32": round(bf16 / fp32, 3),
                  "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
                  "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}
    print(f"{args.task}: fp32 {fp32:.2f}, cpu_bf16 {bf16:.2f} examples/s (medians of {args.repeats}): "
          f"ratio {bf16 / fp32:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
