#!/usr/bin/env bash
# The automodel stack (matrix `stacks.automodel`: NeMo AutoModel) on a GPU host, one GPU.
#   bash scripts/device-automodel.sh NAME [WHEEL_DIR]  -> $OUT/NAME.jsonl, NAME.log, NAME-versions.txt
# WHEEL_DIR (default .whl/automodel, made by `make automodel-wheels`): nemo-automodel 0.7.0, the
# transformers 5.18.0 it pins and torchao 0.17.0, installed with --no-deps into a --target dir put
# first on PYTHONPATH, over the host's torch and peft (an offline host: the device tool carries them).
# Every row's single-device cells (FSDP2Config over one GPU, as AutoModel's recipes run), SFT and
# LoRA, checks train, peft_roundtrip and generate, AutoModel's own class and force_hf.
# JOBS (default 6) pytest-xdist workers on the one GPU; SELECT narrows (e.g. "--arch LlamaForCausalLM");
# SHARD=K/N runs every N-th row from the K-th. LAYOUTS (default single) adds fsdp2,tp,ep on a host with two GPUs or more; LIMIT_S stops it.
set -u
name=$1
wheels=${2:-.whl/automodel}
OUT=${OUT:-/tmp/device-automodel}
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 COMPAT_HARNESS_CACHE=/tmp/compat-harness-cache-$name PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "/tmp/site-$name" "$wheels"/*.whl > "$OUT/$name-pip.log" 2>&1 || { cat "$OUT/$name-pip.log"; exit 2; }
# torchao's wheel also installs top-level test/ and bin/ folders: they would shadow nothing of ours,
# but drop them so that `import test` finds no stranger
rm -rf "/tmp/site-$name/test" "/tmp/site-$name/bin"
export PYTHONPATH=/tmp/site-$name:$PWD
python3 -c 'import platform, os, torch, transformers, peft
from importlib.metadata import version
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| nemo_automodel", version("nemo-automodel"), "| torchao", version("torchao"),
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "| cpu cores", os.cpu_count())' \
  | tee "$OUT/$name-versions.txt"
# SHARD=K/N runs every N-th row from the K-th (N calls of the device tool's 10 minutes each)
if [ -n "${SHARD:-}" ]; then
  rows=$(python3 -c 'import sys; from harness.spec.load import load_matrix
k, n = map(int, sys.argv[1].split("/")); names = sorted(load_matrix("matrix").architectures)
print(",".join(names[k - 1::n]))' "$SHARD")
  SELECT="${SELECT:-} --arch $rows"
fi
start=$(date +%s)
# shellcheck disable=SC2086 # SELECT is a list of options
timeout "${LIMIT_S:-560}" python3 -m pytest matrix -q -m gpu --stack automodel --tier tiny \
  --layout "${LAYOUTS:-single}" ${SELECT:-} -n "${JOBS:-6}" -p no:cacheprovider \
  --results "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
rc=$?
echo "$name rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/$name-versions.txt"
tail -n 40 "$OUT/$name.log"
