#!/usr/bin/env bash
# `make test`: every phase (each a make target, runnable alone: `make unit`) runs, even after one
# fails, so that one run tells everything that is broken; at the end one line per phase with its
# wall time and result (`phase unit: ok in 212 s`), and the exit status is 1 when any failed.
#   scripts/test-phases.sh PHASE...   (the Makefile passes TEST_PHASES and MAKE)
# Variables given on make's command line reach every phase (make exports them in MAKEFLAGS).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MAKE:=make}"
summary=()
failed=0
begin=$SECONDS
for phase in "$@"; do
  echo "=== phase $phase"
  start=$SECONDS
  $MAKE --no-print-directory "$phase"
  rc=$?
  took=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then
    summary+=("phase $phase: ok in $took s")
  else
    summary+=("phase $phase: FAILED (make exit $rc) in $took s")
    failed=1
  fi
done
echo
echo "=== make test: $((SECONDS - begin)) s"
printf '%s\n' "${summary[@]}"
exit "$failed"
