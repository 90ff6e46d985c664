#!/usr/bin/env bash
# CPU dry runs of every device command in this kit, at toy sizes, with the GPU machine's package set
# simulated (gpu_like/sitecustomize.py hides prefect, mlflow, duckdb, the MiniLM package, ...).
# Proves the commands, paths, carries and $OUT limits before a session spends device minutes.
#   bash benchmarks/gpu/dryrun.sh [measure|recipe|all]        (default all; ~5 min on 2 busy cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
PY=${PYTHON:-python3}
D=${DRY:-/tmp/bertflow-gpu-dry}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export BERTFLOW_GPU_LIKE=1 PYTHONPATH="$PWD/benchmarks/gpu/gpu_like:$PWD"
run() { echo "+ $*"; nice -n 10 "$@"; }

if [[ $what == measure || $what == all ]]; then
  test -d .devcarry/measure || BERTFLOW_GPU_LIKE=0 run "$PY" benchmarks/gpu/prepare_carry.py --for measure
  for part in 1 2; do
    rm -rf "$D/measure$part"
    OUT="$D/measure$part" run "$PY" benchmarks/gpu/run_measure.py "$part" --dry-run
    ls -la "$D/measure$part"
  done
fi

if [[ $what == recipe || $what == all ]]; then
  # the same overrides for every step (non-runtime keys must match across chunks): a 2 x 64 model, the real
  # 16k vocab (so the carried bytes/token are the real ones), a 1.5-minute budget over the 3 chunks
  SETS=(--set pretrain.hidden_size=64 --set pretrain.num_layers=2
        --set pretrain.num_heads=2 --set pretrain.intermediate_size=128 --set pretrain.batch_size=16
        --set pretrain.warmup_steps=5 --set pretrain.budget_minutes=1.5 --set pretrain.device=cpu
        --set pretrain.compile=false --set pretrain.num_workers=0 --set pretrain.log_every=10
        --set pretrain.checkpoint_every=20)
  # a real .devcarry/recipe (and recipe-state, results) is set aside and put back; the toy ones are removed
  keep=$(mktemp -d -p "$PWD/.devcarry" .dry-keep-XXXX)
  for d in recipe recipe-state results; do [[ -d .devcarry/$d ]] && mv ".devcarry/$d" "$keep/" || true; done
  trap 'rm -rf .devcarry/recipe .devcarry/recipe-state .devcarry/results; for d in recipe recipe-state results; do [[ -d "$keep/$d" ]] && mv "$keep/$d" .devcarry/ || true; done; rm -rf "$keep"' EXIT
  BERTFLOW_GPU_LIKE=0 run "$PY" benchmarks/gpu/prepare_carry.py --for recipe --scale 0.05 "${SETS[@]}" \
      --work "$D/recipe-build" --ckpt-ratio 0.85
  rm -rf "$D"/r1 "$D"/r2 "$D"/r3 "$D"/run-a "$D"/run-b .devcarry/recipe-state
  # chunk 1: fresh start, stops at its deadline on a checkpoint step
  OUT="$D/r1" run "$PY" benchmarks/gpu/recipe_chunk.py --chunk 1 --minutes 0.9 --run-dir "$D/run-a" "${SETS[@]}" \
      --pack-reserve-s 10
  BERTFLOW_GPU_LIKE=0 run "$PY" benchmarks/gpu/prepare_carry.py --adopt-state "$D/r1"
  # chunk 2 on a "fresh machine" (another run dir): resumes from the carried slim checkpoint
  OUT="$D/r2" run "$PY" benchmarks/gpu/recipe_chunk.py --chunk 2 --minutes 0.9 --run-dir "$D/run-b" "${SETS[@]}" \
      --resume required --pack-reserve-s 10
  BERTFLOW_GPU_LIKE=0 run "$PY" benchmarks/gpu/prepare_carry.py --adopt-state "$D/r2"
  # chunk 3 on the "warm machine" (same run dir as chunk 2): full local checkpoint; then export + fine-tunes
  OUT="$D/r3" run "$PY" benchmarks/gpu/recipe_chunk.py --chunk 3 --minutes 3.0 --run-dir "$D/run-b" "${SETS[@]}" \
      --resume required --final --ft-reserve-min 2.2 --ft-estimate-min 0.6 --ft-limit 200 \
      --ft-set epochs=1 --ft-set max_steps=5 --ft-set device=cpu --pack-reserve-s 10
  for r in r1 r2 r3; do ls -la "$D/$r"; done
fi
echo "dry runs done: $D"
