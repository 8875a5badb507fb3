#!/usr/bin/env bash
# `compat-harness sweep` on an offline host that brings its own Python, torch and packages (the GPU
# image), its cells on gloo ranks on the host's CPU cores, from release trees carried as one archive:
#   bash scripts/device-sweep.sh NAME ARCHIVE [SWEEP_ARGS...]
# ARCHIVE is `compat-harness sweep-trees --pack` of the releases and the held packages (made where an
# index is reachable: README, compat-harness sweep). It is unpacked into TREES (default
# .cache/sweep-trees: ignored, so a warm host keeps it between calls) and every tree is verified
# against its RECORD; then `compat-harness sweep SWEEP_ARGS --on-host TREES --out .cache/sweeps/NAME`
# runs under LIMIT_S (default 560 s; the device tool stops a call at 600). A sweep stopped there writes
# the grid of what finished and the next call with the same arguments resumes it.
# $OUT (default /tmp/device-sweep) gets NAME.txt (the sweep's output), NAME-grid.md, NAME-sweep.json and
# NAME-records.tar.gz (every release's records and pytest log). RESUME=FILE (a NAME-records.tar.gz
# that came back from an earlier call) seeds .cache/sweeps/NAME on a fresh host, so a sweep resumes there.
set -u
name=${1:?usage: device-sweep.sh NAME ARCHIVE [SWEEP_ARGS...]}
archive=${2:?usage: device-sweep.sh NAME ARCHIVE [SWEEP_ARGS...]}
shift 2
OUT=${OUT:-/tmp/device-sweep}
TREES=${TREES:-.cache/sweep-trees}
mkdir -p "$OUT" "$TREES"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} COMPAT_HARNESS_CACHE=$PWD/.cache/compat-harness
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
start=$(date +%s)
if [ -n "${RESUME:-}" ] && [ ! -d ".cache/sweeps/$name" ]; then
  mkdir -p .cache/sweeps && tar -xzf "$RESUME" -C .cache/sweeps || exit 2
fi
stamp="$TREES/.unpacked-$(sha256sum "$archive" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m harness.cli sweep-trees --unpack "$archive" --out "$TREES" > "$OUT/$name-trees.txt" 2>&1 \
    || { cat "$OUT/$name-trees.txt"; exit 2; }
  touch "$stamp"
fi
# WHEELS: a directory of wheels of what releases require and the host lacks (made into trees here, by
# the host's own pip: binary wheels for its Python); `sweep --dry-run` (DRY=1) names what is missing.
if [ -n "${WHEELS:-}" ]; then
  python3 -m harness.cli sweep-trees --wheels "$WHEELS" --out "$TREES" >> "$OUT/$name-trees.txt" 2>&1 \
    || { tail -n 5 "$OUT/$name-trees.txt"; exit 2; }
fi
if [ -n "${DRY:-}" ]; then
  python3 -m harness.cli sweep "$@" --on-host "$TREES" --dry-run; exit $?
fi
echo "$name: $(grep -c 'as its RECORD lists them' "$OUT/$name-trees.txt" 2>/dev/null || echo 0) tree(s) verified" \
  "in $(( $(date +%s) - start )) s; python $(python3 -c 'import platform; print(platform.python_version())')," \
  "torch $(python3 -c 'import torch; print(torch.__version__)'), $(nproc) cores"
timeout -k 15 "${LIMIT_S:-560}" python3 -m harness.cli sweep "$@" --on-host "$TREES" --out ".cache/sweeps/$name" \
  > "$OUT/$name.txt" 2>&1
rc=$?
cp ".cache/sweeps/$name/grid.md" "$OUT/$name-grid.md" 2>/dev/null
cp ".cache/sweeps/$name/sweep.json" "$OUT/$name-sweep.json" 2>/dev/null
tar -czf "$OUT/$name-records.tar.gz" -C .cache/sweeps "$name"
grep '^\[sweep\]' "$OUT/$name.txt" | grep -v "finished by an earlier sweep" | tail -n 40
sed -n '/^--- /,$p' "$OUT/$name.txt" | tail -n 60
echo "$name: sweep exit $rc after $(( $(date +%s) - start )) s (124: stopped at LIMIT_S, the same call resumes;" \
  "1: a release without a verdict, see $name-sweep.json)"
