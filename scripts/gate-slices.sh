#!/usr/bin/env bash
# The CPU slices under every gate release set (matrix/releases.toml, gate = true): one virtual
# environment per set, installed from its lock file (locks/NAME.txt, scripts/install-env.sh) and
# reused while that file is unchanged.
# Every set runs the tiny single-device slice, the layout slice (every layout, both methods,
# train and parity) and the TRL stack's single-device slice, in ONE pytest session per set
# (scripts/run-selections.sh: one start of the xdist workers and the gloo rank pools, not three).
# A set must give what the matrix declares: a stack failure is a known_limits entry with a
# version specifier (then xfail); any other failure, or a harness-error, fails.
#
# The set that the default environment ($BIN: `make setup`) is installed from runs there, in no
# venv of its own; the selections in DEFAULT_ENV_SELECTIONS (';'-separated, e.g. `make test`'s
# slice) join its session, or run in a session of their own in $BIN when no gate set is the
# default environment's.
#
# Called by `make gates` (and `make slice-gates`) with BIN, PYTHON, TORCH, JOBS, GATE_SELECTIONS
# (the Makefile's, ;-separated), RECORDS_DIR (each session's records: gate-NAME.jsonl, fresh per run)
# and optionally DEFAULT_ENV_SELECTIONS in the environment.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${BIN:=.venv/bin}" "${PYTHON:=python3}" "${TORCH:=torch==2.13.0}" "${JOBS:=2}"
: "${GATE_SELECTIONS:?}" "${GATE_VENVS:=.venvs}"
: "${RECORDS_DIR:=reports/local/test}" "${DEFAULT_ENV_SELECTIONS:=}"
gate_selections=()
IFS=';' read -r -a gate_selections <<< "$GATE_SELECTIONS"
default_env_selections=()
IFS=';' read -r -a default_env_selections <<< "$DEFAULT_ENV_SELECTIONS"
mkdir -p "$RECORDS_DIR"
status=0
record() {  # pytest's exit code: 0, or 5 (nothing collected), is fine; anything else fails the gate
  [ "$1" -eq 0 ] || [ "$1" -eq 5 ] || status=1
}
sets=$("$BIN/python" -c "from harness.spec.load import load_matrix
for s in load_matrix().release_sets.values():
    if s.gate: print(s.name, s.transformers, s.peft)") || exit 2
# The release set the default environment is installed from (matrix/releases.toml `default = true`).
default_set=$("$BIN/python" -c "from harness.run.locks import default_set
from harness.spec.load import load_matrix
print(default_set(load_matrix()).name)") || exit 2
run_set() {  # NAME BIN [SELECTION ...]: the gate selections (after the given ones) in one session
  local name=$1 bin=$2 results="$RECORDS_DIR/gate-$1.jsonl"
  shift 2
  rm -f "$results"
  # stdin from /dev/null: the loop reads the sets from its own
  BIN="$bin" JOBS="$JOBS" scripts/run-selections.sh "gate-$name" "$@" "${gate_selections[@]}" \
    -- --results "$results" < /dev/null
  record $?
}
joined=0
while read -r name transformers peft; do
  if [ "$name" = "$default_set" ]; then
    echo "=== gate $name: the default environment ($BIN)"
    run_set "$name" "$BIN" "${default_env_selections[@]}"
    joined=1
    continue
  fi
  venv="$GATE_VENVS/$name"
  # made from the set's lock file (scripts/install-env.sh), again only when the lock changed
  stamp="$venv/.installed-$(sha256sum "locks/$name.txt" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    start=$SECONDS
    PYTHON="$PYTHON" TORCH="$TORCH" scripts/install-env.sh "$venv" "$name" < /dev/null &&
      touch "$stamp" || { echo "gate $name: could not make its environment"; status=1; continue; }
    echo "gate $name: environment made in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
  fi
  echo "=== gate $name: transformers $transformers, peft $peft"
  run_set "$name" "$venv/bin"
done <<< "$sets"
if [ "${#default_env_selections[@]}" -gt 0 ] && [ "$joined" -eq 0 ]; then
  echo "=== no gate set is the default environment's: its selections in a session of their own ($BIN)"
  results="$RECORDS_DIR/default-env.jsonl"
  rm -f "$results"
  BIN="$BIN" JOBS="$JOBS" scripts/run-selections.sh default-env "${default_env_selections[@]}" \
    -- --results "$results"
  record $?
fi
exit $status
