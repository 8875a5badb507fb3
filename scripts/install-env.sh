#!/usr/bin/env bash
# One way to install an environment of a release set: exactly its lock file, nothing resolved today.
#
#   scripts/install-env.sh VENV SET        e.g. .venv newest (make setup), .venvs/gpu-image (make gates)
#
# 1. torch from the host: TORCH (default torch==2.13.0: pip finds the CPU build on this machine's
#    disk; uv installs that file with the lock). On a GPU image, make the venv with
#    --system-site-packages and TORCH= (empty) to keep its own build.
# 2. locks/SET.txt with --no-deps --require-hashes: every other package at its locked release (uv,
#    itself installed first from its line of the lock).
# 3. this project, editable, without its dependencies and without build isolation (the lock holds
#    setuptools), so nothing is resolved or fetched besides the lock.
# 4. `compat-harness lock --verify SET`: the installed distributions against the lock, and the stamp
#    that every record names (env.lock).
# WHEELS=DIR installs from that directory only (an offline host; `make wheels` fills it).
# VENV_ARGS: extra options for `python -m venv` (e.g. --system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: install-env.sh VENV SET}
set_name=${2:?usage: install-env.sh VENV SET}
lock="locks/$set_name.txt"
[ -f "$lock" ] || { echo "install-env: $lock not found: run \`compat-harness lock $set_name\`" >&2; exit 2; }
: "${PYTHON:=python3}" "${TORCH=torch==2.13.0}"
index=()
[ -n "${WHEELS:-}" ] && index=(--no-index --find-links "$WHEELS")
rm -rf "$venv"
# shellcheck disable=SC2086
"$PYTHON" -m venv ${VENV_ARGS:-} "$venv"
pip=("$venv/bin/python" -m pip install -q "${index[@]}")
# torch: pip finds the host's file (its configuration names where it lies) and uv installs that file,
# without its dependencies (the lock holds them), from its cache after the first venv: 8 s with its
# bytecode, where pip's install took 34 s.
torch_wheel=()
if [ -n "$TORCH" ]; then
  "$venv/bin/python" -m pip download -q --no-deps "${index[@]}" -d "$venv/.torch-wheel" "$TORCH"
  torch_wheel=("$venv"/.torch-wheel/*.whl)
fi
# uv installs the rest (seconds where pip takes minutes); it comes first, alone, from the lock's own line.
"${pip[@]}" --no-deps --require-hashes -r <(awk '/^uv==/ {p = 1; print; next} p && /^ / {print; next} {p = 0}' "$lock")
uv=("$venv/bin/uv" pip install -q --python "$venv/bin/python" "${index[@]}")
# --compile-bytecode: uv writes no .pyc by default (pip does), so without it every process compiles
# the transformers, peft and trl modules it imports, again and again where PYTHONDONTWRITEBYTECODE
# is set (as on this project's development machines): about 4 s a process that imports transformers,
# and the sessions start many (xdist workers, gloo rank pools, the tests' fresh processes).
"${uv[@]}" --no-deps --require-hashes --compile-bytecode -r "$lock"
[ "${#torch_wheel[@]}" -eq 0 ] || "${uv[@]}" --no-deps --compile-bytecode "${torch_wheel[@]}"
rm -rf "$venv/.torch-wheel"
"${uv[@]}" --no-deps --no-build-isolation -e .
"$venv/bin/compat-harness" lock --verify "$set_name"
