#!/usr/bin/env bash
# The wheels the automodel stack needs on an offline GPU host (scripts/device-automodel.sh installs
# them with --no-deps into a --target dir over the host's torch and peft):
#   nemo-automodel 0.7.0, the transformers 5.18.0 it pins, and torchao 0.17.0 (which it imports;
#   linux x86_64, CPython 3.12 as on the GPU image: its wheel is cp310-abi3, one for every CPython >= 3.10).
# Its other requirements (datasets, megatron-fsdp, mistral-common, ...) are not needed to import it and
# run from_pretrained, its LoRA and its Checkpointer, so they are not fetched.
#   bash scripts/automodel-wheels.sh [DIR]     (default .whl/automodel; make automodel-wheels)
# A wheel already in DIR is not fetched again; the script prints every wheel with its size and sha256.
# PYTHON (default python3) is the interpreter whose pip downloads; PyPI must be reachable.
set -euo pipefail
dir=${1:-.whl/automodel}
python=${PYTHON:-python3}
mkdir -p "$dir"

# requirement | file name pattern in DIR | pip options beyond --no-deps --only-binary=:all:
wheels=(
  "nemo-automodel==0.7.0|nemo_automodel-0.7.0-*.whl|"
  "transformers==5.18.0|transformers-5.18.0-*.whl|"
  "torchao==0.17.0|torchao-0.17.0-*.whl|--platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp --abi abi3"
)

have() {  # have PATTERN: the first file of DIR matching PATTERN, or nothing
  compgen -G "$dir/$1" | head -n 1
}

for entry in "${wheels[@]}"; do
  IFS='|' read -r req pattern opts <<< "$entry"
  if [ -n "$(have "$pattern")" ]; then
    echo "present: $(basename "$(have "$pattern")")"
    continue
  fi
  echo "downloading $req"
  log=$(mktemp)
  # shellcheck disable=SC2086 # opts is a list of options
  if ! "$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --dest "$dir" $opts "$req" > "$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: pip download of $req failed (see above); is PyPI reachable from here?" >&2
    exit 1
  fi
  rm -f "$log"
  if [ -z "$(have "$pattern")" ]; then
    echo "error: pip download of $req succeeded but no $pattern is in $dir" >&2
    exit 1
  fi
done

echo "wheels in $dir:"
total=0
for entry in "${wheels[@]}"; do
  IFS='|' read -r _ pattern _ <<< "$entry"
  file=$(have "$pattern")
  size=$(wc -c < "$file" | tr -d ' ')
  total=$((total + size))
  sum=$("$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$file")
  printf '  %s  %6.1f MiB  %s\n' "$sum" "$(awk "BEGIN { print $size / 1048576 }")" "$(basename "$file")"
done
printf 'total %.1f MiB\n' "$(awk "BEGIN { print $total / 1048576 }")"
