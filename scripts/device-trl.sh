#!/usr/bin/env bash
# Evidence for the TRL stack (matrix `stacks.trl`) on a device-tool GPU host, one step per call:
#   single: every row's TRL single-device cells on the GPU with the image's releases, and at the
#           same time on the host's CPU with the newest releases (.whl/newest);
#   gloo:   every row's TRL multi-rank `train` and `parity` cells on CPU gloo ranks with the newest releases:
#           each ends as a pass with its layout proven, layout-not-applied, or the stack's error.
# The host is offline: trl and datasets (and what they need beyond the image) travel in .whl/trl,
# transformers 5.24.0 and peft 0.21.2 in .whl/newest.
# Usage (device tool, carry [".whl"]): bash scripts/device-trl.sh single|gloo  -> logs, records in $OUT
set -u
STEP=${1:-single}
OUT=${OUT:-/tmp/device-trl}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 COMPAT_HARNESS_CACHE=${COMPAT_HARNESS_CACHE:-/tmp/compat-harness-cache}
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/trl .whl/trl/*.whl > "$OUT/pip.log" 2>&1
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/newest .whl/newest/*.whl >> "$OUT/pip.log" 2>&1
IMAGE="env PYTHONPATH=/tmp/trl:$PWD python"
NEWEST="env PYTHONPATH=/tmp/newest:/tmp/trl:$PWD python"
versions='import torch, transformers, peft, trl, accelerate, datasets; print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__, "| trl", trl.__version__, "| accelerate", accelerate.__version__, "| datasets", datasets.__version__)'
{ $IMAGE -c "$versions"; $NEWEST -c "$versions"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; } \
  > "$OUT/versions.txt" 2>&1
run() {  # name, timeout, python, pytest arguments...
  local name=$1 limit=$2 py=$3 start; shift 3
  start=$(date +%s)
  timeout "$limit" $py -m pytest matrix -q -p no:cacheprovider --stack trl --tier tiny "$@" \
    --results "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? in $(( $(date +%s) - start )) s" >> "$OUT/summary.txt"
}
if [ "$STEP" = single ]; then
  run gpu-trl-tiny-single 500 "$IMAGE" -m gpu --layout single -n 6 &
  run cpu-trl-tiny-single-newest 500 "$NEWEST" -m cpu --layout single -n 8 &
  wait
else
  run cpu-gloo-trl-tiny-train-parity-newest 540 "$NEWEST" -m cpu --layout fsdp2,tp,fsdp2_tp,ep --check train,parity -n 5
fi
cat "$OUT/versions.txt" "$OUT/summary.txt"
tail -n 12 "$OUT"/*.log
