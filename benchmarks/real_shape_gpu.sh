#!/bin/bash
# The real-shape tier on one GPU: every real config (matrix/real_shapes.toml), LoRA and full SFT,
# records to $OUT (or ./reports/records/local.jsonl). Dense rows first, then MoE and hybrid rows,
# each group under its own time limit so that a slow group cannot take the records of the other.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-reports/local}
mkdir -p "$OUT"
RESULTS=$OUT/real-shape.jsonl
RUN_ID=${RUN_ID:-real-shape-$(date -u +%Y%m%dT%H%M%SZ)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
run() {
  timeout "$1" python -m pytest -p no:cacheprovider matrix -q -m gpu --device cuda --tier real-shape \
    --arch "$2" --results "$RESULTS" --run-id "$RUN_ID" -rA 2>&1 | grep -v -i "warn"
}
start=$(date +%s)
run "${DENSE_LIMIT:-200}" LlamaForCausalLM,Qwen3ForCausalLM,MistralForCausalLM
echo "dense rows: $(( $(date +%s) - start )) s"
run "${SPARSE_LIMIT:-280}" Qwen3MoeForCausalLM,GptOssForCausalLM,NemotronHForCausalLM
echo "all rows: $(( $(date +%s) - start )) s"
