"""Lock files: the exact releases of every package an environment holds, one file per release set.

`locks/NAME.txt` is the environment of release set NAME of matrix/releases.toml, written by
`compat-harness lock` (uv pip compile, with hashes) and installed by `make setup` (the default
set) and `make gates` (every gate set) with `pip install --no-deps --require-hashes`: what is
installed is exactly what the file says, whatever the index serves that day. torch is not in it:
the CPU build comes from this machine's disk, and a GPU image brings its own (the README says
how), so the file holds everything else.

An installed environment carries a stamp in its prefix (`STAMP`): the set and the file's digest.
Every record names them (`env.lock`), so two runs whose locks differ can be told apart even where
the releases under test are the same. This module is plain stdlib: records and the matrix stage
read it without importing the code that makes environments.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

LOCK_DIR = Path(__file__).resolve().parent.parent / "locks"
STAMP = "compat-harness-lock.json"
# The packages of a torch build that the lock leaves to the host: torch itself and what only its
# CUDA build pulls in (the CPU build needs none of them).
TORCH_BUILD = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# `name==version` at the start of a requirement line, then its environment marker (if any) up to
# the line continuation of the hashes.
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;([^\\]*))?")


def lock_path(set_name: str, lock_dir: Path | None = None) -> Path:
    return (lock_dir or LOCK_DIR) / f"{set_name}.txt"


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def digest(path: Path) -> str:
    """The lock file's identity: the first 16 hex digits of its sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def pins(path: Path) -> list[tuple[str, str, str]]:
    """Every pinned line of the lock: (normalized name, release, environment marker or "")."""
    out = []
    for line in Path(path).read_text().splitlines():
        found = _PINNED.match(line)
        if found:
            out.append((normalize(found.group(1)), found.group(2), (found.group(3) or "").strip()))
    return out


def pinned_versions(path: Path) -> dict[str, set[str]]:
    """Every package the lock pins, name -> its releases (a universal lock may pin two releases of one
    package for different Pythons, each behind a marker)."""
    out: dict[str, set[str]] = {}
    for name, version, _ in pins(path):
        out.setdefault(name, set()).add(version)
    return out


def write_stamp(prefix: Path, set_name: str, path: Path) -> dict:
    """Mark an environment as installed from `path` (make setup and make gates call this last)."""
    stamp = {"set": set_name, "file": Path(path).name, "sha256": digest(path)}
    (Path(prefix) / STAMP).write_text(json.dumps(stamp) + "\n")
    return stamp


def installed_lock(prefix: str | None = None) -> dict | None:
    """The lock this environment was installed from ({"set", "file", "sha256"}), or None where it was
    not installed from one (a GPU image's own packages, an environment made by hand)."""
    path = Path(prefix or sys.prefix) / STAMP
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
