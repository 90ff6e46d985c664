#!/usr/bin/env bash
# Device command for issue #8, one chunk per call (see benchmarks/gpu/README.md). On the device machine:
#   bash benchmarks/gpu/run_recipe.sh 1 7.5                               # chunk 1: fresh start, ~6.8 min of pretraining
#   bash benchmarks/gpu/run_recipe.sh 2 7.5 --resume required             # chunk 2: carried or warm state, ~6.8 min
#   bash benchmarks/gpu/run_recipe.sh 3 6.5 --resume required --final     # chunk 3: rest of the budget + SST-2 fine-tunes
# Carry [".devcarry/recipe"] for chunk 1, [".devcarry/recipe", ".devcarry/recipe-state"] after it
# (prepare_carry.py --for recipe; prepare_carry.py --adopt-state <files_at> between calls).
# Extra arguments go to recipe_chunk.py (e.g. the same --set overrides every chunk).
# $OUT gets ckpt.json + ckpt.partNN (slim checkpoint), recipe-chunkN.json, recipe-chunkN.log (<= 8 files).
set -uo pipefail
cd "$(dirname "$0")/../.."
chunk=${1:?chunk number}; minutes=${2:?minutes for this call (<= 9.5)}; shift 2
export TOKENIZERS_PARALLELISM=false
source benchmarks/gpu/device_env.sh
test -d .devcarry/recipe || { echo "missing .devcarry/recipe: carry it (prepare_carry.py --for recipe)"; exit 2; }
hard=$("$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + 40))" "$minutes")
timeout -k 10 "$hard" "$PY" benchmarks/gpu/recipe_chunk.py --chunk "$chunk" --minutes "$minutes" "$@"
