#!/usr/bin/env bash
# The CPU slices under every gate release set (matrix/releases.toml, gate = true): one virtual
# environment per set, made once by uv and reused while its pins and pyproject.toml are unchanged.
# Every set runs the tiny single-device slice, the layout slice (every layout, both methods,
# train and parity) and the TRL stack's single-device slice. A set must give what the matrix
# declares: a stack failure is a known_limits entry with a version specifier (then xfail); any
# other failure, or a harness-error, fails.
#
# Called by `make gates` with BIN, PYTHON, TORCH, JOBS, SLICE, LAYOUT_SLICE, TRL_SLICE in the
# environment.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${BIN:=.venv/bin}" "${PYTHON:=python3}" "${TORCH:=torch==2.13.0}" "${JOBS:=2}"
: "${SLICE:?}" "${LAYOUT_SLICE:?}" "${TRL_SLICE:?}" "${GATE_VENVS:=.venvs}"
find_links=()
[ -n "${PIP_FIND_LINKS:-}" ] && find_links=(--find-links "$PIP_FIND_LINKS")
status=0
record() {  # pytest's exit code: 0, or 5 (nothing collected), is fine; anything else fails the gate
  [ "$1" -eq 0 ] || [ "$1" -eq 5 ] || status=1
}
sets=$("$BIN/python" -c "from harness.spec.load import load_matrix
for s in load_matrix().release_sets.values():
    if s.gate: print(s.name, s.transformers, s.peft)") || exit 2
while read -r name transformers peft; do
  venv="$GATE_VENVS/$name"
  stamp="$venv/.installed-$transformers-$peft-$(sha256sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    start=$SECONDS
    rm -rf "$venv"
    "$BIN/uv" venv -q --python "$PYTHON" "$venv" &&
      "$BIN/uv" pip install -q --python "$venv/bin/python" "${find_links[@]}" "$TORCH" \
        "transformers==$transformers" "peft==$peft" -e ".[dev]" &&
      touch "$stamp" || { echo "gate $name: could not make its environment"; status=1; continue; }
    echo "gate $name: environment made in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
  fi
  echo "=== gate $name: transformers $transformers, peft $peft"
  results="reports/records/local-gate-$name.jsonl"
  "$venv/bin/pytest" -q -n "$JOBS" matrix -m cpu --tier tiny --layout single --arch "$SLICE" \
    --results "$results"
  record $?
  "$venv/bin/pytest" -q -n "$JOBS" matrix -m cpu --tier tiny --layout fsdp2,tp,fsdp2_tp,ep \
    --check train,parity --arch "$LAYOUT_SLICE" --results "$results"
  record $?
  "$venv/bin/pytest" -q -n "$JOBS" matrix -m cpu --stack trl --tier tiny --layout single --arch "$TRL_SLICE" \
    --results "$results"
  record $?
done <<< "$sets"
exit $status
