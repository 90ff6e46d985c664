"""Does resuming from the slim checkpoint (transport.py) train on like resuming from the full one? A CPU check.

Four runs of the real stage on the same masked data, same config, ``--steps`` optimizer steps:

- ``uninterrupted``;
- ``full resume``: stopped at the half-way checkpoint, resumed from it (should equal uninterrupted);
- ``slim resume``: the same checkpoint packed and unpacked (bf16 weights, factored second moment,
  first moment zeroed): what a chunk on a fresh device machine resumes from;
- ``weights only``: as slim, but the second moment zeroed too (what carrying only weights would give
  without a re-warmup; shows why the factored moment travels).

Prints the mean MLM loss over the first ``--window`` steps after the resume point and over the
last ``--window`` steps, for each.

    python benchmarks/gpu/check_transport.py --data DIR --tokenizer DIR [--steps 400]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kit  # noqa: E402
import transport  # noqa: E402

sys.path.insert(0, str(kit.REPO))


class Stop(Exception):
    pass


def train(cfg, data: Path, tok: Path, run_dir: Path, losses: dict, stop_at: int | None = None) -> None:
    from bert_core.pretrain.stage import run

    def on_metrics(step, m):
        losses[step] = m["mlm_loss"]

    def on_progress(step, total):
        if stop_at is not None and step == stop_at:
            raise Stop

    try:
        run(cfg, data, tok, run_dir, on_metrics=on_metrics, on_progress=on_progress)
    except Stop:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    from bert_core.pretrain.config import PretrainConfig

    half = args.steps // 2
    cfg = PretrainConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, batch_size=16,
                         lr=args.lr, warmup_steps=20, max_steps=args.steps, device="cpu", num_workers=0,
                         log_every=1, checkpoint_every=half, keep_checkpoints=3, adam_beta2=0.98)
    data, tok = Path(args.data), Path(args.tokenizer)
    root = Path(tempfile.mkdtemp(prefix="check-transport-"))
    results = {}
    try:
        base: dict = {}
        train(cfg, data, tok, root / "a", base)
        results["uninterrupted"] = base
        first: dict = {}
        train(cfg, data, tok, root / "b", first, stop_at=half)
        point = root / "b" / "checkpoints" / f"step-{half:07d}"
        for name, mode in (("full resume", None), ("slim resume", "factored"), ("weights only", "zeros")):
            run_dir = root / name.replace(" ", "-")
            if mode is None:
                shutil.copytree(root / "b", run_dir)
            else:
                packed = root / f"packed-{mode}"
                transport.pack(point, root / "b", packed)
                transport.unpack(packed, run_dir, v_mode=mode)
            rest: dict = {}
            train(cfg, data, tok, run_dir, rest)
            results[name] = {**{k: v for k, v in first.items() if k <= half}, **rest}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    w = args.window

    def mean(d, lo, hi):
        vals = [v for k, v in d.items() if lo < k <= hi]
        return sum(vals) / max(len(vals), 1)

    print(f"\nMLM loss, tiny model (2 x 64), {args.steps} steps, resumed at step {half}:")
    print(f"{'run':16s} {'steps ' + str(half + 1) + '-' + str(half + w):>14s} {'last ' + str(w):>10s} {'step ' + str(half + 1):>10s}")
    for name, d in results.items():
        print(f"{name:16s} {mean(d, half, half + w):14.4f} {mean(d, args.steps - w, args.steps):10.4f} "
              f"{d.get(half + 1, float('nan')):10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
