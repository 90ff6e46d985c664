#!/usr/bin/env bash
# Device command for issues #9/#10/#5 (see benchmarks/gpu/README.md). Usage on the device machine:
#   bash benchmarks/gpu/run_measure.sh 1      # #9 pretraining throughput + #10 scoring   (~7.5 min)
#   bash benchmarks/gpu/run_measure.sh 2      # #5 MiniLM fine-tuning quality, then extras (~9 min)
# Needs the carry [".devcarry/measure"] (python benchmarks/gpu/prepare_carry.py --for measure).
# Writes $OUT/measure-partN.log and $OUT/measure-partN.json (2 files; the device returns at most 8).
set -uo pipefail
cd "$(dirname "$0")/../.."
part=${1:?part 1 or 2}; shift
export TOKENIZERS_PARALLELISM=true
source benchmarks/gpu/device_env.sh
test -d .devcarry/measure || { echo "missing .devcarry/measure: carry it (prepare_carry.py --for measure)"; exit 2; }
# the python driver keeps its own 560 s deadline; this is the backstop under the device's 600 s
timeout -k 10 585 "$PY" benchmarks/gpu/run_measure.py "$part" "$@"
