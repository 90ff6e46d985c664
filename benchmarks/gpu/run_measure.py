"""The figures issues #9, #10 and #5 still need, measured on the device GPU in two commands of < 10 min each.

    bash benchmarks/gpu/run_measure.sh 1     # call 1: #9 pretraining throughput, #10 bulk scoring
    bash benchmarks/gpu/run_measure.sh 2     # call 2: #5 fine-tuning quality (MiniLM), then extras
    bash benchmarks/gpu/dryrun.sh            # here, on CPU: the same steps at toy sizes

Each part runs its steps in order of value under one deadline (``--budget-s``, default 560 s:
the device kills a command at 600 s). Every step gets ``timeout = min(its cap, time left - 20 s)``
and is skipped when less than its minimum is left, so the part always ends in time and writes
its figures. Everything lands in two files under ``$OUT``: ``measure-partN.log`` (all steps'
output, merged) and ``measure-partN.json`` (environment, nvidia-smi, per-step status and times,
and each benchmark's own JSON). The last lines printed are a summary table.

GPU-minute estimates per step (H100; what each does and why it should take that long) are in
STEPS below; the sum per part is printed at the start. Inputs: ``.devcarry/measure`` (build it
with ``prepare_carry.py --for measure``; carry it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kit  # noqa: E402

CARRY = kit.DEVCARRY / "measure"
SHARED_TMP = Path("/tmp/bf-shared/data")
WORK = Path("/tmp/bf-measure")


def steps(part: int, dry: bool) -> list[dict]:
    """The steps of a part: name, command, cap and estimate (seconds), the figure file it writes.

    Estimates (H100, from the scripts' sizes; the machine's start, 1-2 min per call, is not in them):

    9-base   bench_pretrain base 12x768, B256 x 128, 15 warm-up + 50 timed steps, each side. Peer ~325k tok/s
             -> 65 steps x 32.8k tok = 2.1M tok = 7 s; ours --compile: inductor ~60-90 s on 16 cores, then
             ~3 s of steps; synthetic shards (17.7k rows) ~5 s; imports + CUDA init ~15 s.  ~2 min (cap 4).
    9-small  same at 4x512: peer ~750k tok/s -> 3 s; compile ~45-60 s.                     ~1.5 min (cap 3).
    10-base  bench_score base, 50k SST-2 rows, 3 repeats: peer ~3.3k rows/s -> 15 s per run x (2 batch sizes
             x 3 repeats) = 90 s + 6 pipeline builds; ours 4 runs (warm-up + 3) at >= 30k rows/s -> ~2 s each;
             ceiling: tokenize 50k rows ~3 s + forward < 1 s; building base (110M, random), saving it, writing
             the 8-file lake ~15 s; imports + CUDA init ~15 s.                                 ~2.5 min (cap 5).
    10-small same with MiniLM (from the carry): peer ~6-8k rows/s -> ~45 s.                      ~1.7 min (cap 4).
    5-sst2   MiniLM-L6, 63,982 train phrases x 3 epochs / batch 32 = 6,000 steps at ~7-10 ms (6 x 384 is
             launch-bound) = 45-60 s; tokenising 67k rows ~5 s; 3 validations on 3.4k rows, fp32 final
             evaluation, export check, predictions.parquet ~20 s.                               ~1.5-2 min (cap 5).
    5-bank77 9,003 x up to 15 epochs / 32 = 4,200 steps (patience 3 may stop earlier) ~35 s + 15
             validations of 1k rows.                                                             ~1-1.5 min (cap 4).
    5-conll  14,041 sentences x up to 8 epochs / 32 = 3,500 steps at max_length 256 (mean ~25 pieces)
             ~35-45 s + 8 validations of 3,250 sentences (entity F1 in NumPy).                ~1.5 min (cap 5).
    9-autotune  bench_pretrain small --compile-mode max-autotune (GEMM autotuning + CUDA graphs): compile
             3-5 min is the whole cost; an extra figure, so last, with whatever time is left.  ~4 min.
    10-bs512 bench_score base --batch-size 512 (the third command in RESULTS.md): extra.   ~2.5 min.

    Part 1 ~7.7 min of 9.3; part 2 ~5 min of the three #5 runs, then the extras in what is left.
    Session: 2 starts (~3 min) + 7.5 + 9.3 + transfers/idle (~1 min) ~ 21 min of the 30; ~9 min spare for
    re-running one failed part.
    """
    py = sys.executable
    bp = [py, "benchmarks/bench_pretrain.py"]
    bs = [py, "benchmarks/gpu/bench_score_carried.py"]
    ft = [py, "benchmarks/quality_finetune.py", "--model", str(CARRY / "minilm"), "--data", str(SHARED_TMP),
          "--out", str(WORK / "ftq")]
    pre_json, score_json = str(WORK / "pretrain.jsonl"), str(WORK / "score.json")
    if dry:  # toy sizes on CPU, same scripts, same paths, same argument shapes
        big = ["--batch", "8", "--seq", "32", "--vocab", "1000", "--steps", "3", "--warmup", "1", "--device", "cpu"]
        p1 = [
            dict(name="9-base  bench_pretrain (dry: tiny)", cmd=bp + ["--size", "tiny", *big, "--json", pre_json],
                 cap=120, est=20, out="pretrain"),
            dict(name="9-small bench_pretrain (dry: tiny)", cmd=bp + ["--size", "tiny", *big, "--json", pre_json],
                 cap=120, est=20, out="pretrain"),
            dict(name="10-base bench_score (dry: tiny, 300 rows)",
                 cmd=bs + ["--models", "tiny", "--rows", "300", "--repeats", "1", "--device", "cpu",
                           "--threads", "1", "--json", score_json], cap=240, est=30, out="score"),
            dict(name="10-small bench_score (dry: carried MiniLM, 300 rows)",
                 cmd=bs + ["--models", "small", "--rows", "300", "--repeats", "1", "--device", "cpu",
                           "--threads", "1", "--json", str(WORK / "score-small.json")], cap=240, est=40, out="score"),
        ]
        lim = ["--limit", "100", "--set", "epochs=1", "--set", "max_steps=3", "--set", "device=cpu"]
        p2 = [dict(name=f"5-{t} quality_finetune (dry: 100 ex, 3 steps)", cmd=ft + ["--task", t, *lim], cap=180,
                   est=40, out=f"ft:{t}") for t in ("sst2", "conll")]
        # banking77 without --limit: the full-run path (real file names, categories.json check, seeded split,
        # 1,000 validation rows), only 2 optimizer steps
        p2.insert(1, dict(name="5-banking77 quality_finetune (dry: full data, 2 steps)",
                          cmd=ft + ["--task", "banking77", "--set", "epochs=1", "--set", "max_steps=2", "--set",
                                    "device=cpu", "--set", "eval_batch_size=256"], cap=240, est=90, out="ft:banking77"))
        p2.append(dict(name="9-autotune (dry: skipped, CPU compile takes minutes)", cmd=None, cap=0, est=0, out=None))
        return p1 if part == 1 else p2
    common = ["--batch", "256", "--seq", "128", "--steps", "50", "--warmup", "15", "--compile", "--json", pre_json]
    p1 = [
        dict(name="9-base  bench_pretrain base --compile", cmd=bp + ["--size", "base", *common], cap=240, est=120,
             out="pretrain", min=90),
        dict(name="9-small bench_pretrain small --compile", cmd=bp + ["--size", "small", *common], cap=180, est=90,
             out="pretrain", min=75),
        # one model per step: bench_score writes its JSON at the end, so a cut-off step loses only its own model
        dict(name="10-base bench_score base 50k rows", cmd=bs + ["--models", "base", "--rows", "50000",
             "--repeats", "3", "--json", score_json], cap=300, est=150, out="score", min=120),
        dict(name="10-small bench_score small 50k rows", cmd=bs + ["--models", "small", "--rows", "50000",
             "--repeats", "3", "--json", str(WORK / "score-small.json")], cap=240, est=100, out="score", min=90),
    ]
    p2 = [
        dict(name="5-sst2 quality_finetune MiniLM", cmd=ft + ["--task", "sst2"], cap=300, est=110, out="ft:sst2",
             min=90),
        dict(name="5-banking77 quality_finetune MiniLM", cmd=ft + ["--task", "banking77"], cap=240, est=80,
             out="ft:banking77", min=60),
        dict(name="5-conll quality_finetune MiniLM", cmd=ft + ["--task", "conll"], cap=300, est=100,
             out="ft:conll", min=75),
        dict(name="9-autotune bench_pretrain small max-autotune",
             cmd=bp + ["--size", "small", *common, "--compile-mode", "max-autotune"], cap=330, est=240,
             out="pretrain", min=150),
        dict(name="10-bs512 bench_score base --batch-size 512",
             cmd=bs + ["--models", "base", "--rows", "50000", "--repeats", "3", "--batch-size", "512",
                       "--json", str(WORK / "score-bs512.json")], cap=240, est=150, out="score512", min=120),
    ]
    return p1 if part == 1 else p2


def unpack_data() -> dict:
    """``.devcarry/measure/data/*.gz`` -> ``/tmp/bf-shared/data`` (plain files, as ``../shared/data`` has them)."""
    src = CARRY / "data"
    if not src.is_dir():
        raise SystemExit(f"{src} missing: build it with `python benchmarks/gpu/prepare_carry.py --for measure` "
                         "and carry .devcarry/measure")
    files = {}
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(src)
        dst = SHARED_TMP / (str(rel)[:-3] if p.suffix == ".gz" else str(rel))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(p, dst)
        files[str(dst.relative_to(SHARED_TMP))] = dst.stat().st_size
    return files


def collect() -> dict:
    figures: dict = {}
    pre = kit.read_json_lines(WORK / "pretrain.jsonl")
    if pre:
        figures["pretrain"] = pre
    for key, path in (("score", WORK / "score.json"), ("score_small", WORK / "score-small.json"),
                      ("score_bs512", WORK / "score-bs512.json")):
        data = kit.read_json(path)
        if data:
            figures[key] = data
    for task in ("sst2", "banking77", "conll"):
        data = kit.read_json(WORK / "ftq" / f"{task}-quality.json")
        if data:
            figures[f"finetune_{task}"] = data
    return figures


def summary(figures: dict) -> list[str]:
    rows = []
    for line in figures.get("pretrain", []):
        f = line.get("figures", {})
        peer, ours = f.get("peer", {}), f.get("ours", {})
        ratio = f.get("ratio", {}).get("tokens_per_s")
        rows.append(f"#9  pretrain {line.get('size'):5s} {line.get('compile_mode') if line.get('compile') else 'eager':12s}"
                    f" peer {peer.get('tokens_per_s', 0):>11,.0f} tok/s  ours {ours.get('tokens_per_s', 0):>11,.0f} tok/s"
                    f"  ratio {ratio if ratio is None else f'{ratio:.2f}x'}  MFU ours "
                    f"{ours.get('mfu', float('nan')):.1%}  (goal: base >= 2.5x, small >= 4x)")
    for key in ("score", "score_small", "score_bs512"):
        for r in (figures.get(key) or {}).get("results", []):
            if r.get("mode") == "rss":
                continue
            rows.append(f"#10 score {r['model']:5s} bs={r['ours_batch_size']:<4} peer best {r['peer_best_rows_per_s']:>9,.0f}"
                        f" rows/s  ours {r['ours_rows_per_s']:>9,.0f}  ratio {r['ratio_ours_vs_peer']:.2f}x (goal >= 10x)"
                        + (f"  ceiling {r['ceiling_rows_per_s']:,.0f}, ours/ceiling {r['ours_vs_ceiling']:.0%} (goal >= 50%)"
                           if "ceiling_rows_per_s" in r else ""))
    for task in ("sst2", "banking77", "conll"):
        r = figures.get(f"finetune_{task}")
        if r:
            m = r.get("metrics", {})
            rows.append(f"#5  finetune {task:9s} {r['metric']} {r['value']:.4f} (target {r['target']}) "
                        f"{'smoke run' if r.get('smoke_run') else ('PASS' if r['passed'] else 'FAIL')}; "
                        f"{int(m.get('epochs_run', 0))} epochs, best {int(m.get('best_epoch', 0))}, "
                        f"{r['wall_seconds']:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", type=int, choices=[1, 2])
    ap.add_argument("--budget-s", type=float, default=560.0, help="the whole part's wall budget")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on CPU (here, before spending device time)")
    ap.add_argument("--out", default=None, help="default: $OUT")
    ap.add_argument("--only", default="", help="comma-separated step-name prefixes to run (e.g. 9-small,10)")
    args = ap.parse_args(argv)
    out = kit.out_dir(args.out)
    log = out / f"measure-part{args.part}.log"
    runner = kit.Runner(log, args.budget_s)
    env = kit.environment_report()
    runner.log(f"measure part {args.part}{' (DRY RUN, CPU)' if args.dry_run else ''}: {env.get('gpu', 'no GPU')}, "
               f"torch {env.get('torch')}, transformers {env.get('transformers')}\n{env.get('nvidia_smi', '')}")
    if not args.dry_run and env.get("cuda_available") is not True:
        runner.log("WARNING: no CUDA device visible; the figures below would be CPU figures")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = unpack_data()
    runner.log(f"data unpacked into {SHARED_TMP}: {data}")
    plan = steps(args.part, args.dry_run)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        plan = [s for s in plan if any(s["name"].startswith(w) for w in wanted)]
    runner.log(f"plan: {len(plan)} steps, estimate {sum(s['est'] for s in plan) / 60:.1f} min "
               f"of {args.budget_s / 60:.1f} min budget")

    def write_result() -> dict:
        result = {"part": args.part, "dry_run": args.dry_run, "env": env, "data": data,
                  "steps": [asdict(r) for r in runner.results], "figures": collect(),
                  "seconds": round(time.monotonic() - runner.t0, 1)}
        (out / f"measure-part{args.part}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        return result

    step_env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(kit.REPO),
                os.environ.get("PYTHONPATH", "")])), "TOKENIZERS_PARALLELISM": "true"}
    for s in plan:
        if s["cmd"] is None:
            runner.results.append(kit.StepResult(s["name"], "skipped", None, 0, 0, 0, "not in a dry run"))
            continue
        res = runner.run(s["name"], s["cmd"], cap_s=s["cap"], estimate_s=s["est"], min_s=s.get("min", 20),
                         env=step_env)
        task = s["out"][3:] if s["out"] and s["out"].startswith("ft:") else None
        if task and res.status == "failed" and res.rc == 1 and (WORK / "ftq" / f"{task}-quality.json").is_file():
            res.status, res.note = "ok", "ran; target missed (quality_finetune exits 1)"  # a figure, not a crash
        write_result()  # after every step: a part cut off by the device still returns what it measured
    result = write_result()
    figures = result["figures"]
    lines = ["", f"===== measure part {args.part} summary ({result['seconds']:.0f}s) ====="]
    lines += runner.summary_rows() + [""] + (summary(figures) or ["(no figures)"])
    problems = kit.check_out(out)
    lines.append("$OUT: " + ", ".join(sorted(p.name for p in out.iterdir())) + "; "
                 + ("all files will come back" if not problems else "PROBLEM: " + "; ".join(problems)))
    for line in lines:
        runner.log(line)
    failed = [r for r in runner.results if r.status in ("failed", "timeout")]
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
