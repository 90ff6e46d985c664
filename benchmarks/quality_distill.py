"""Distillation quality: a fine-tuned teacher -> a smaller student, on the teacher's own data and validation split.

    PYTHONPATH=. python benchmarks/quality_distill.py --task sst2 --teacher OUT/sst2/model --out OUT

Runs ``bert_core.distill.stage.run`` (the same function the ``distill`` stage calls) on the
``quality_finetune`` preset of ``--task`` (same training file, same seeded validation split, so the
teacher's and the student's figures are on the same examples), student = ``--layers`` layers taken
from every k-th teacher layer. Prints the teacher's and the student's validation metric, their
agreement, parameter counts and model-only rows/s; writes ``OUT/<task>-student/`` (the stage
output: ``model/`` is what ``bench_cheap_scoring.py --student`` takes) and
``OUT/<task>-distill.json``. Goal (issue 21): within 2.0 points of the teacher (``--max-drop``).
``--set key=value`` overrides a ``distill`` key (``--set epochs=1 --set temperature=4``);
``--limit N``: a seeded sample of N training examples (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark module, run from anywhere

from quality_finetune import TASKS, build_config, device_name, subsample  # noqa: E402

from bertflow.bert_core.configtools import apply_overrides, from_dict, to_dict  # noqa: E402
from bertflow.bert_core.distill.config import DistillConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=sorted(t for t in TASKS if t != "squad"))
    ap.add_argument("--teacher", required=True, type=Path, help="the fine-tuned model (quality_finetune OUT/<task>/model)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--layers", type=int, default=3, help="student layers (every k-th teacher layer)")
    ap.add_argument("--max-drop", type=float, default=2.0, help="points of the metric the student may lose")
    ap.add_argument("--limit", type=int, default=None, help="train on a sample of N examples (smoke run)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a distill config key (repeatable)")
    args = ap.parse_args(argv)

    data_cfg = build_config(args.task, Path(args.data), [])
    if args.limit:
        data_cfg = subsample(data_cfg, args.limit, args.out / f"{args.task}-distill-sample")
    cfg = from_dict(DistillConfig, apply_overrides({"student_layers": args.layers, "epochs": 3,
                                                    "early_stopping_patience": 1}, args.overrides))
    metric = TASKS[args.task]["target"][0]

    def on_metrics(step: int, m: dict[str, float]) -> None:
        if "valid_eval_metric" in m:
            print(f"  epoch {int(m['epoch'])} step {step}: valid {metric} {m['valid_eval_metric']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"{args.task}: distilling {args.teacher} into {cfg.student_layers} layers on {data_cfg.train_path} "
          f"({device_name()})", flush=True)
    from bertflow.bert_core.distill.stage import run

    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    result = run(cfg, data_cfg, args.teacher, args.out / f"{args.task}-student", on_metrics=on_metrics)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    m = result.metrics
    drop = (m["teacher_eval_metric"] - m["eval_metric"]) * 100
    passed = drop <= args.max_drop
    report = {
        "task": args.task, "metric": metric, "student": m["eval_metric"], "teacher": m["teacher_eval_metric"],
        "drop_points": drop, "max_drop_points": args.max_drop, "passed": passed, "smoke_run": bool(args.limit),
        "metrics": m, "config": to_dict(cfg), "data": to_dict(data_cfg), "teacher_dir": str(args.teacher),
        "layer_map": result.details["layer_map"], "stop_reason": result.details["stop_reason"],
        "history": result.details["history"], "wall_seconds": wall,
        "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "device": device_name(), "output": result.path,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.task}-distill.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    verdict = "smoke run, not checked" if args.limit else ("PASS" if passed else "FAIL")
    print(f"{args.task}: student {metric} {m['eval_metric']:.4f} vs teacher {m['teacher_eval_metric']:.4f} "
          f"({drop:+.2f} points; goal <= {args.max_drop}) {verdict}; agreement {m['agreement_with_teacher']:.4f}; "
          f"{int(m['student_layers'])} of {int(m['teacher_layers'])} layers (teacher layers "
          f"{result.details['layer_map']}), {m['student_parameters'] / 1e6:.1f}M vs {m['teacher_parameters'] / 1e6:.1f}M "
          f"parameters; model-only {m.get('student_rows_per_s', 0):.0f} vs {m.get('teacher_rows_per_s', 0):.0f} rows/s; "
          f"{int(m['epochs_run'])} epochs, {wall:.0f} s wall")
    return 0 if passed or args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
