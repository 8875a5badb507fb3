#!/usr/bin/env bash
# The tiny layout matrix on a device-tool host's 16 CPU cores (gloo ranks), under one release set.
#   bash scripts/device-layouts.sh NAME [WHEEL_DIR]   -> $OUT/NAME.jsonl, $OUT/NAME.log, $OUT/NAME-versions.txt
# With WHEEL_DIR (carried with the device tool: the set's transformers and peft, and what they
# need newer or older than the image), those wheels go to a --target dir put first on PYTHONPATH;
# without it the image's own releases run (torch 2.11, transformers 5.17.0, peft 0.21.0).
# Layouts single (the MoE kernel variants need it), fsdp2, tp, fsdp2_tp and ep, every method,
# check and variant of the tiny tier. JOBS (default 8) pytest-xdist workers; LIMIT_S stops it.
# MARK (default cpu; gpu for the GPU), LAYOUTS (a comma list) and SELECT (more pytest selection
# options, e.g. "--arch DeciLMForCausalLM --implementation custom") narrow or move the run.
set -u
name=$1
wheels=${2:-}
OUT=${OUT:-/tmp/device-layouts}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 COMPAT_HARNESS_CACHE=/tmp/compat-harness-cache-$name PYTHONUNBUFFERED=1
site=$PWD
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "/tmp/site-$name" "$wheels"/*.whl > "$OUT/$name-pip.log" 2>&1 || { cat "$OUT/$name-pip.log"; exit 2; }
  site=/tmp/site-$name:$PWD
fi
export PYTHONPATH=$site
python3 -c 'import platform, os, torch, transformers, peft
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| cpu cores", os.cpu_count())' | tee "$OUT/$name-versions.txt"
start=$(date +%s)
# shellcheck disable=SC2086 # SELECT is a list of options
timeout "${LIMIT_S:-560}" python3 -m pytest matrix -q -m "${MARK:-cpu}" --tier tiny \
  --layout "${LAYOUTS:-single,fsdp2,tp,fsdp2_tp,ep}" ${SELECT:-} \
  -n "${JOBS:-8}" -p no:cacheprovider --results "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
rc=$?
echo "$name: pytest rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/$name-versions.txt"
tail -n 3 "$OUT/$name.log"
