#!/usr/bin/env bash
# Evidence on a device-tool GPU host, in one call (the machine is lent for minutes at a time):
#   1. the pool benchmark on the host's CPU (gloo, 2 ranks), first, while nothing else runs;
#   2. the tiny matrix on one GPU, `single` layout, every check (the image's own stack), and at
#      the same time the tiny layout matrix on the host's 16 CPU cores (gloo) with the newest
#      transformers and peft, installed from wheels carried in .wheels/ (the host is offline).
# Usage (device tool, carry [".wheels"]): bash scripts/device-evidence.sh  -> logs and records in $OUT
# SKIP_BENCHMARK=1 / SKIP_GPU=1 leave out steps 1 / 2's GPU half.
set -u
OUT=${OUT:-/tmp/device-evidence}
mkdir -p "$OUT"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 COMPAT_HARNESS_CACHE=${COMPAT_HARNESS_CACHE:-/tmp/compat-harness-cache}
versions='import torch, transformers, peft; print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__)'
python -c "$versions" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/versions.txt"

start=$(date +%s)
[ -n "${SKIP_BENCHMARK:-}" ] || timeout 240 python benchmarks/pool_vs_torchrun.py --device cpu --world-size 2 > "$OUT/cpu-pool-benchmark.log" 2>&1
echo "benchmark rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"

# The image's torch is not in its system site-packages, so a venv cannot see it: the newest
# transformers and peft (and the libraries they need newer) go to a --target dir put first on
# PYTHONPATH; compiled libraries the image already has (numpy, pydantic, yaml) stay the image's.
NEWEST=python
if [ -d .wheels ]; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/newest \
    $(ls .wheels/*.whl | grep -v -E 'numpy|pydantic|annotated_types|typing_inspection|pyyaml') > "$OUT/pip.log" 2>&1
  NEWEST="env PYTHONPATH=/tmp/newest:$PWD python"
fi
$NEWEST -c "$versions" | tee -a "$OUT/versions.txt"

start=$(date +%s)
[ -n "${SKIP_GPU:-}" ] || (timeout 300 python -m pytest matrix -q -m gpu --tier tiny --layout single -n 3 -p no:cacheprovider \
   --results "$OUT/gpu-tiny-single.jsonl" > "$OUT/gpu-tiny-single.log" 2>&1
 echo "gpu single rc=$? in $(( $(date +%s) - start )) s" >> "$OUT/summary.txt") &
(timeout 330 $NEWEST -m pytest matrix -q -m cpu --tier tiny --layout fsdp2,tp,fsdp2_tp,ep -n 6 \
   -p no:cacheprovider --results "$OUT/cpu-gloo-tiny-layouts.jsonl" > "$OUT/cpu-gloo-tiny-layouts.log" 2>&1
 echo "cpu layouts rc=$? in $(( $(date +%s) - start )) s" >> "$OUT/summary.txt") &
wait
cat "$OUT/summary.txt"
tail -n 5 "$OUT"/*.log
