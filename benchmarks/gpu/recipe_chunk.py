"""One chunk of the issue-#8 recipe on the device machine: resume, pretrain until the chunk's deadline, hand back.

    python benchmarks/gpu/recipe_chunk.py --chunk 1 --minutes 7.5                       # fresh start
    python benchmarks/gpu/recipe_chunk.py --chunk 2 --minutes 7.5 --resume required     # from .devcarry/recipe-state
    python benchmarks/gpu/recipe_chunk.py --chunk 3 --minutes 6.5 --resume required --final

Each chunk calls the real stage, ``bert_core.pretrain.stage.run``, on the carried masked data
(``.devcarry/recipe``) with ``configs/recipe-30min.yaml`` (+ the same ``--set`` overrides every
chunk: non-runtime keys must match the run's ``run.json``). Its ``budget_minutes`` is the whole
run's pretraining clock; the stage keeps ``elapsed_minutes`` in its checkpoints, so the LR
schedule runs on across chunks. A chunk stops early at a checkpoint step: ``on_progress`` raises
``StopChunk`` when the next checkpoint would land after the chunk's deadline (the checkpoint of
that step is already on disk). No bert_core change.

Where the state comes from, in order:
  1. the run dir on this machine (``--run-dir``), if the previous call left the machine warm
     (a call within ~30 s of the last reuses it, files included): full fidelity;
  2. the slim checkpoint carried in ``--state`` (``.devcarry/recipe-state``, what the previous
     chunk returned; ``prepare_carry.py --adopt-state`` puts it there), when its step is newer;
  3. nothing: a fresh start (refused with ``--resume required``).

Into ``$OUT`` (<= 8 files): ``ckpt.json`` + ``ckpt.partNN`` (the slim checkpoint, always, also
after the last chunk: the final weights), ``recipe-chunkN.json`` (figures) and
``recipe-chunkN.log``. With ``--final``: export (the stage's, or one made here from the last
checkpoint if the budget did not end), fine-tune on SST-2 through ``benchmarks/quality_finetune.py``,
then, time permitting, the same fine-tune from a randomly initialised model of the same shape
(the issue's no-pretraining floor).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path

T_START = time.monotonic()
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kit  # noqa: E402
import transport  # noqa: E402

sys.path.insert(0, str(kit.REPO))
RECIPE_YAML = kit.REPO / "configs" / "recipe-30min.yaml"
SST2_TARGET = 0.88


class StopChunk(Exception):
    """Raised from on_progress right after a checkpoint step, when the next one would miss the deadline."""


class Tee:
    def __init__(self, stream, path: Path) -> None:
        self.stream = stream
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.fh.write(s)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()
        self.fh.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


def elapsed() -> float:
    return time.monotonic() - T_START


def say(text: str) -> None:
    print(f"[{elapsed():6.1f}s] {text}", flush=True)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, required=True, help="a label for the files written (1, 2, 3)")
    ap.add_argument("--minutes", type=float, required=True, help="this process's wall budget (the device limit is 10)")
    ap.add_argument("--final", action="store_true", help="after pretraining: export, fine-tune SST-2, baseline")
    ap.add_argument("--resume", choices=["auto", "required", "never"], default="auto")
    ap.add_argument("--config", default=str(RECIPE_YAML))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--carry", default=str(kit.DEVCARRY / "recipe"))
    ap.add_argument("--state", default=str(kit.DEVCARRY / "recipe-state"))
    ap.add_argument("--run-dir", default="/tmp/bertflow-recipe/run", help="on the device: survives a warm machine")
    ap.add_argument("--out", default=None, help="default: $OUT")
    ap.add_argument("--pack-reserve-s", type=float, default=30.0, help="kept for packing the checkpoint into $OUT")
    ap.add_argument("--ft-reserve-min", type=float, default=3.0,
                    help="--final: minutes kept after pretraining for export + the SST-2 fine-tune")
    ap.add_argument("--ft-estimate-min", type=float, default=1.5, help="--final: one SST-2 fine-tune, for planning")
    ap.add_argument("--no-baseline", action="store_true", help="--final: skip the random-init fine-tune")
    ap.add_argument("--ft-limit", type=int, default=None, help="dry runs: fine-tune on N examples (quality_finetune --limit)")
    ap.add_argument("--ft-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra finetune overrides for quality_finetune (dry runs: epochs=1, max_steps=5)")
    return ap.parse_args()


# ---------------------------------------------------------------------------------------------- state
def local_step(run_dir: Path) -> int | None:
    from bert_core.pretrain import checkpoint as ckpt

    if not (run_dir / "run.json").is_file():
        return None
    points = ckpt.list_checkpoints(run_dir)
    return int(points[-1].name.split("-")[1]) if points else None


def resolve_state(args, run_dir: Path) -> dict:
    state_dir = Path(args.state)
    here = local_step(run_dir)
    carried = transport.read_index(state_dir) if state_dir.is_dir() else None
    if args.resume == "never":
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"source": "fresh (--resume never)", "step": 0}
    if carried is not None and (here is None or int(carried["step"]) > here):
        shutil.rmtree(run_dir, ignore_errors=True)
        t = time.perf_counter()
        index = transport.unpack(state_dir, run_dir)
        return {"source": f"carried slim checkpoint {state_dir}", "step": int(index["step"]),
                "elapsed_minutes": index.get("elapsed_minutes"), "unpack_s": round(time.perf_counter() - t, 1),
                "note": "bf16 weights, factored exp_avg_sq, exp_avg restarted at zero"}
    if here is not None:
        return {"source": f"local run dir {run_dir} (warm machine: full checkpoint)", "step": here}
    if args.resume == "required":
        raise SystemExit(f"--resume required, but neither {run_dir} nor {state_dir}/ckpt.json holds a checkpoint "
                         "(copy the last chunk's files with prepare_carry.py --adopt-state, and carry "
                         ".devcarry/recipe-state)")
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"source": "fresh start", "step": 0}


# ---------------------------------------------------------------------------------------------- pretraining
def pretrain(cfg, data_dir: Path, tok_dir: Path, run_dir: Path, deadline: float, history: list) -> dict:
    from bert_core.pretrain.stage import run

    every = cfg.pretrain.checkpoint_every
    marks: collections.deque = collections.deque(maxlen=200)

    def on_metrics(step: int, m: dict) -> None:
        history.append({"step": step, **{k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()}})
        keys = ("loss", "mlm_accuracy", "lr", "tokens_per_s", "mfu", "epoch", "grad_norm", "gpu_mem_gb")
        say(f"step {step}: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys if k in m))

    def on_progress(step: int, total: int) -> None:
        now = time.monotonic()
        marks.append((now, step))
        if step % every:
            return
        (t_a, s_a), (t_b, s_b) = marks[0], marks[-1]
        per_step = (t_b - t_a) / (s_b - s_a) if s_b > s_a else 0.0
        if now + 1.15 * every * per_step > deadline:  # the next checkpoint would come too late: stop on this one
            raise StopChunk(step)

    say(f"pretraining: budget {cfg.pretrain.budget_minutes} min in all; this chunk stops by "
        f"{deadline - T_START:.0f}s (checkpoint every {every} steps)")
    t = time.perf_counter()
    try:
        result = run(cfg.pretrain, data_dir, tok_dir, run_dir, on_metrics=on_metrics, on_progress=on_progress)
        out = {"finished": True, "metrics": result.metrics, "details": {k: str(v) for k, v in result.details.items()}}
    except StopChunk as stop:
        out = {"finished": False, "stopped_at_step": int(stop.args[0])}
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


def latest_state(run_dir: Path) -> tuple[Path, dict]:
    from bert_core.pretrain import checkpoint as ckpt

    point = ckpt.list_checkpoints(run_dir)[-1]
    return point, json.loads((point / ckpt.STATE_FILE).read_text(encoding="utf-8"))


def export_from_checkpoint(cfg, data_dir: Path, tok_dir: Path, point: Path, dst: Path, random_init: bool) -> Path:
    """An HF export of the last checkpoint (budget not finished), or of a fresh random init (the floor)."""
    import torch

    from bert_core.pretrain.checkpoint import MODEL_FILE, load_safetensors
    from bert_core.pretrain.export import export_model
    from bert_core.pretrain.inputs import read_data_info
    from bert_core.pretrain.model import BertForPretraining
    from bert_core.pretrain.stage import build_model_config

    mc = build_model_config(cfg.pretrain, read_data_info(data_dir), None)
    if random_init:
        torch.manual_seed(cfg.pretrain.seed)
        state = BertForPretraining(mc, sparse_mlm=cfg.pretrain.sparse_mlm).state_dict()
        prov = {"step": 0, "note": "random init, no pretraining (baseline)"}
    else:
        state = load_safetensors(point / MODEL_FILE)
        prov = {"step": int(point.name.split("-")[1]), "note": "exported from a checkpoint before the budget ended"}
    export_model(state, mc, tok_dir, dst, prov)
    return dst


def finetune(runner: kit.Runner, args, cfg, model_dir: Path, carry: Path, work: Path, name: str,
             estimate_s: float) -> dict:
    f = cfg.finetune
    cmd = [sys.executable, "benchmarks/quality_finetune.py", "--task", "sst2", "--model", str(model_dir),
           "--data", str(carry / "finetune"), "--out", str(work),
           "--set", f"train_path={carry / 'finetune' / 'sst2' / 'train.tsv.gz'}"]
    for key in ("lr", "epochs", "batch_size", "max_length", "warmup_ratio", "early_stopping_patience",
                "valid_fraction", "seed"):
        cmd += ["--set", f"{key}={getattr(f, key)}"]
    for item in args.ft_set:
        cmd += ["--set", item]
    if args.ft_limit:
        cmd += ["--limit", str(args.ft_limit)]
    res = runner.run(name, cmd, cap_s=600, estimate_s=estimate_s, min_s=45,
                     env={"PYTHONPATH": str(kit.REPO)})
    report = kit.read_json(work / "sst2-quality.json") or {}
    out = {"status": res.status, "seconds": res.seconds}
    if report:
        out.update({"accuracy": report.get("value"), "goal": SST2_TARGET,
                    "meets_goal": (report.get("value") or 0) >= SST2_TARGET and not report.get("smoke_run"),
                    "smoke_run": report.get("smoke_run"), "epochs_run": report["metrics"].get("epochs_run"),
                    "best_epoch": report["metrics"].get("best_epoch"), "macro_f1": report["metrics"].get("macro_f1"),
                    "wall_seconds": report.get("wall_seconds"), "hyperparameters": {
                        k: report["hyperparameters"].get(k) for k in ("lr", "epochs", "batch_size", "max_length",
                                                                       "warmup_ratio", "valid_fraction", "seed")}})
    return out


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    args = parse()
    out = kit.out_dir(args.out)
    log = out / f"recipe-chunk{args.chunk}.log"
    sys.stdout = Tee(sys.stdout, log)
    sys.stderr = Tee(sys.stderr, log)
    budget_end = T_START + args.minutes * 60
    from bert_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    carry, run_dir = Path(args.carry), Path(args.run_dir)
    data_dir, tok_dir = carry / "data", carry / "tokenizer"
    report: dict = {"chunk": args.chunk, "final": args.final, "minutes": args.minutes, "config": args.config,
                    "overrides": args.overrides, "env": kit.environment_report()}
    say(f"recipe chunk {args.chunk}{' (final)' if args.final else ''}: {args.minutes} min; "
        f"{report['env'].get('gpu', 'no GPU')}; torch {report['env'].get('torch')}")
    carried = kit.read_json(carry / "MANIFEST.json") or {}
    data_tokens = (carried.get("carry_data") or {}).get("tokens")
    if carried.get("scale", 1) != 1:
        say(f"WARNING: {carry} was built with --scale {carried.get('scale')} (a dry-run carry, not the recipe's)")
    state = resolve_state(args, run_dir)
    report["state"] = state
    say(f"state: {state['source']} (step {state['step']})")

    reserve = args.pack_reserve_s + (args.ft_reserve_min * 60 if args.final else 0)
    history: list = []
    report["pretrain"] = pretrain(cfg, data_dir, tok_dir, run_dir, budget_end - reserve, history)
    point, st = latest_state(run_dir)
    report["pretrain"].update({"end_step": st["step"], "elapsed_minutes": round(st["elapsed_minutes"], 3),
                               "tokens": st["tokens"], "last_metrics": st.get("last_metrics"),
                               "budget_minutes": cfg.pretrain.budget_minutes,
                               "epochs": round(st["rows"] / max(1, _num_rows(data_dir)), 2),
                               "data_tokens": data_tokens, "history": history[-400:]})
    say(f"pretraining {'FINISHED' if report['pretrain']['finished'] else 'paused'} at step {st['step']}: "
        f"{st['elapsed_minutes']:.2f} of {cfg.pretrain.budget_minutes} min, {st['tokens'] / 1e9:.3f}B tokens, "
        f"{report['pretrain']['epochs']} epochs")
    index = transport.pack(point, run_dir, out, extra={"chunk": args.chunk})
    report["checkpoint"] = {k: v for k, v in index.items() if k != "parts"} | {"files": [p["file"] for p in index["parts"]]}
    say(f"slim checkpoint step {index['step']}: {kit.mb(index['packed_bytes'])} in {len(index['parts'])} part(s) "
        f"(full checkpoint {kit.mb(index['full_checkpoint_bytes'])}), {index['seconds']}s")

    if args.final:
        runner = kit.Runner(None, budget_end - time.monotonic(), reserve_s=10, t0=T_START)
        work = Path("/tmp/bertflow-recipe")
        if report["pretrain"]["finished"]:
            export = run_dir / "export"
        else:
            export = export_from_checkpoint(cfg, data_dir, tok_dir, point, work / "export-partial", random_init=False)
            say(f"budget not used up: exported step {st['step']} from its checkpoint (LR had not decayed to 0)")
        shutil.rmtree(work / "ft", ignore_errors=True)
        report["sst2"] = finetune(runner, args, cfg, export, carry, work / "ft", "finetune sst2 (recipe model)",
                                  args.ft_estimate_min * 60)
        if not args.no_baseline:
            base = export_from_checkpoint(cfg, data_dir, tok_dir, point, work / "export-random", random_init=True)
            shutil.rmtree(work / "ft-baseline", ignore_errors=True)
            report["sst2_baseline_random_init"] = finetune(runner, args, cfg, base, carry, work / "ft-baseline",
                                                           "finetune sst2 (random init, floor)",
                                                           args.ft_estimate_min * 60)
    report["seconds"] = round(elapsed(), 1)
    (out / f"recipe-chunk{args.chunk}.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    problems = kit.check_out(out)
    p = report["pretrain"]
    lm = p.get("last_metrics") or {}
    print("\n===== recipe chunk summary =====")
    print(f"chunk {args.chunk}: state from {state['source']}; steps {state['step']} -> {p['end_step']}; "
          f"pretraining clock {p['elapsed_minutes']:.2f}/{p['budget_minutes']} min; "
          f"{'finished' if p['finished'] else 'paused'}; {p['epochs']} epochs")
    print(f"  MLM loss {lm.get('final_loss', float('nan')):.4f}, MLM accuracy {lm.get('mlm_accuracy', float('nan')):.4f}, "
          f"session tokens/s {lm.get('tokens_per_s', float('nan')):,.0f}")
    for key in ("sst2", "sst2_baseline_random_init"):
        if key in report:
            r = report[key]
            print(f"  {key}: accuracy {r.get('accuracy')} ({r['status']}, {r['seconds']}s)"
                  + (f"; goal {SST2_TARGET}: {'MET' if r.get('meets_goal') else 'not met'}" if key == "sst2" else ""))
    print(f"  $OUT: {', '.join(sorted(x.name for x in out.iterdir()))}")
    print("  $OUT check: " + ("all files will come back" if not problems else "; ".join(problems)))
    print(f"  wall {elapsed():.0f}s of {args.minutes * 60:.0f}s")
    sys.stdout.flush()
    return 0 if not problems else 3


def _num_rows(data_dir: Path) -> int:
    m = kit.read_json(data_dir / "manifest.json") or {}
    return int(m.get("num_rows", 0))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
