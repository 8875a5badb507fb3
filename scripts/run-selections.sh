#!/usr/bin/env bash
# Several matrix selections in ONE pytest session:
#   scripts/run-selections.sh NAME 'SELECTION' ['SELECTION' ...] [-- PYTEST_ARGS ...]
# Each SELECTION is pytest's matrix arguments, word-split (e.g. 'matrix -m cpu --tier tiny
# --layout single --arch LlamaForCausalLM'); an argument may hold several, separated by ';' (as a
# make variable or an environment variable carries a list of them). Each is collected by a pytest
# of its own (--collect-only -q: no torch, seconds; all of them at once) into a list of node ids;
# the lists are concatenated, in the order given (put the slow selections first, so that the quick
# cells fill in around them on the other worker), and run by one `pytest -n JOBS @list
# PYTEST_ARGS` (e.g. --results FILE). Why one session: each session
# pays its xdist workers' start (torch and transformers imports, about 10 s a worker) and a cold
# gloo rank pool per world size (every rank imports them too); a selection's cells are the same
# whichever session runs them.
#
# The run passes `--stack all` so that every listed cell is collectable, whichever stack its
# selection named (a selection without --stack collects the reference stack only); only the
# listed node ids run.
#
# DIST (xdist's --dist) is `worksteal` by default: a worker that runs out of cells takes the
# pending ones of the other, so a few slow cells (the real tier's, a minute each on 2 cores) do not
# leave one worker idle at the end while the other still has a queue. (`loadgroup`, every gloo cell
# on one worker, queued the whole group behind the real cells; since CPU ranks fork from a
# preloaded forkserver, a pool start is cheap and needs no grouping.)
#
# Environment: BIN (the venv's bin, default .venv/bin), JOBS (default 2), DIST (default worksteal),
# CELLS_DIR (where the lists go, default reports/local/cells: NAME.<k> per selection and NAME.txt).
# Exit status: a
# failing collection's (a usage error stops before anything runs), else the run's; 5 when the
# selections hold no cell (an empty list must never reach pytest: `pytest @empty` would run its
# default paths, the whole matrix).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${BIN:=.venv/bin}" "${JOBS:=2}" "${DIST:=worksteal}" "${CELLS_DIR:=reports/local/cells}"
name=${1:?usage: run-selections.sh NAME SELECTION... [-- PYTEST_ARGS...]}
shift
selections=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  IFS=';' read -r -a split <<< "$1"
  for selection in "${split[@]}"; do
    [ -n "${selection// /}" ] && selections+=("$selection")
  done
  shift
done
[ $# -gt 0 ] && shift  # the --
mkdir -p "$CELLS_DIR"
list="$CELLS_DIR/$name.txt"
: > "$list.all"
# The collections run side by side (each is one process that imports the harness and loads the
# matrix, single-threaded, a few seconds), then are read in the order given.
pids=()
k=0
for selection in "${selections[@]}"; do
  k=$((k + 1))
  # shellcheck disable=SC2086  # a selection is a word list on purpose
  "$BIN/pytest" -q --collect-only $selection > "$CELLS_DIR/$name.$k" &
  pids+=($!)
done
k=0
for selection in "${selections[@]}"; do
  k=$((k + 1))
  part="$CELLS_DIR/$name.$k"
  wait "${pids[$((k - 1))]}"
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    cat "$part" >&2
    echo "$name: collecting selection $k failed (exit $rc): $selection" >&2
    kill "${pids[@]}" 2>/dev/null
    exit "$rc"
  fi
  grep '::' "$part" >> "$list.all"
  echo "$name: $(grep -c '::' "$part") cells  <- $selection"
done
# a cell in two selections runs once
awk '!seen[$0]++' "$list.all" > "$list" && rm -f "$list.all"
total=$(wc -l < "$list")
echo "$name: $total cells in one session ($BIN/pytest -n $JOBS)"
[ "$total" -gt 0 ] || exit 5
"$BIN/pytest" -q -n "$JOBS" --dist "$DIST" @"$list" --stack all "$@"
