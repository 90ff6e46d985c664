# Sourced by the device commands: environment, carried wheels, $OUT, and a GPU snapshot.
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/bertflow-gpu-out}; export OUT; mkdir -p "$OUT"
# Carried wheels (none are needed today: no GPU step imports duckdb; see prepare_carry.py). Kept for a later need.
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || exit 1
fi
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
