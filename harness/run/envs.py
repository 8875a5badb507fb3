"""An isolated environment per release set: the matrix's cells under other library releases.

A bisect or a release watch runs the same cells under releases this environment does not have
(transformers 5.20.0, peft 0.19.0, ...). Each set of pins gets a virtual environment of its own,
made once and reused: keyed by the exact versions, the torch it installs and this project's
pyproject.toml, kept under the harness cache (`envs/`). It holds torch, the pinned releases and
this project (editable, with its dev extra, as the gate environments of `make gates` are), so a
cell runs there as `ENV/bin/python -m pytest matrix ...` with its normal record, whose `env`
names the versions that ran.

uv makes it when it is installed (fast: it links packages from its cache), else `python -m venv`
and pip. A wheel directory is searched first (`wheels`), with the machine's own find-links
(PIP_FIND_LINKS: the CPU build of torch here); with COMPAT_HARNESS_OFFLINE=1 they are the only
index (an offline GPU host).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_root
from harness.spec.matrix import REPO_ROOT, installed_version

STAMP = ".compat-harness-env.json"


class EnvError(RuntimeError):
    """An environment could not be made: the installer's own message."""


def torch_spec() -> str:
    """The torch every environment gets: this environment's release (COMPAT_HARNESS_TORCH overrides),
    so that a result differs only by the pinned releases."""
    if os.environ.get("COMPAT_HARNESS_TORCH"):
        return os.environ["COMPAT_HARNESS_TORCH"]
    version = (installed_version("torch") or "").split("+")[0]
    return f"torch=={version}" if version else "torch"


@dataclass(frozen=True)
class Pins:
    """Exact releases, e.g. {"transformers": "5.20.0", "peft": "0.21.2"}, in a stable order."""

    versions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, versions: Mapping[str, str]) -> Pins:
        return cls(tuple(sorted((name.lower(), str(v)) for name, v in versions.items())))

    @property
    def requirements(self) -> list[str]:
        return [f"{name}=={version}" for name, version in self.versions]

    @property
    def label(self) -> str:
        return " ".join(f"{name} {version}" for name, version in self.versions)

    def key(self, torch: str) -> str:
        """The directory name: readable pins, and a hash of everything else the environment holds."""
        project = (REPO_ROOT / "pyproject.toml").read_bytes()
        digest = hashlib.sha256(project + torch.encode()).hexdigest()[:10]
        return "_".join(f"{name}-{version}" for name, version in self.versions) + f"_{digest}"


@dataclass
class Env:
    path: Path
    pins: Pins
    created: bool  # made by this call (False: reused)
    seconds: float  # how long making (or finding) it took

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def disk_bytes(self) -> int:
        """Its size on disk, each file once (uv links packages from its cache: those are counted too)."""
        seen, total = set(), 0
        for root, _, files in os.walk(self.path):
            for name in files:
                stat = os.lstat(os.path.join(root, name))
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_blocks * 512
        return total


def envs_root() -> Path:
    return cache_root() / "envs"


def uv_binary() -> str | None:
    """uv beside this interpreter (the dev extra installs it) or on PATH."""
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.exists() else shutil.which("uv")


def find_links(wheels: Path | None, offline: bool = False) -> list[str]:
    """The wheel directories to install from: `wheels` and the machine's own (PIP_FIND_LINKS); with
    `offline` they are the only index (a GPU host that reaches no registry)."""
    dirs = [str(wheels)] if wheels else []
    dirs += [d for d in os.environ.get("PIP_FIND_LINKS", "").split() if Path(d).is_dir()]
    args = [arg for d in dirs for arg in ("--find-links", d)]
    return (["--no-index"] if offline else []) + args


def offline() -> bool:
    """COMPAT_HARNESS_OFFLINE=1: install from wheel directories only (no package index)."""
    return os.environ.get("COMPAT_HARNESS_OFFLINE") == "1"


def install_commands(path: Path, pins: Pins, wheels: Path | None, torch: str) -> list[list[str]]:
    """The commands that make the environment at `path` (uv where it is installed, else venv + pip)."""
    pinned_torch = any(name == "torch" for name, _ in pins.versions)  # a watch of torch itself
    packages = [*([] if pinned_torch else [torch]), *pins.requirements, "-e", f"{REPO_ROOT}[dev]"]
    links = find_links(wheels, offline())
    uv = uv_binary()
    if uv:
        return [[uv, "venv", "-q", "--python", sys.executable, str(path)],
                [uv, "pip", "install", "-q", "--python", str(path / "bin" / "python"), *links, *packages]]
    return [[sys.executable, "-m", "venv", str(path)],
            [str(path / "bin" / "python"), "-m", "pip", "install", "-q", *links, *packages]]


def _made_once(path: Path, pins: Pins, label: str, commands: list[list[str]], stamp: dict,
               log: Callable[[str], None], after: Callable[[], None] = lambda: None) -> Env:
    """The environment at `path`, made by `commands` if it is not there yet: one maker at a time (a file
    lock), a half-made one (a maker that died) removed, the stamp written last."""
    from filelock import FileLock

    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / STAMP).is_file():
            return Env(path, pins, False, time.perf_counter() - start)
        shutil.rmtree(path, ignore_errors=True)
        log(f"making an environment {label} in {path}")
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                shutil.rmtree(path, ignore_errors=True)
                output = (done.stderr or done.stdout).strip()[-1500:]
                raise EnvError(f"{' '.join(command[:4])} ... {label} failed (exit {done.returncode}): "
                               f"{output}")
        after()
        seconds = time.perf_counter() - start
        (path / STAMP).write_text(json.dumps({**stamp, "seconds": round(seconds, 1)}))
    return Env(path, pins, True, seconds)


def ensure_env(pins: Pins, *, root: Path | None = None, wheels: Path | None = None,
               log: Callable[[str], None] = print) -> Env:
    """The environment of `pins`, made if it is not there yet."""
    torch = torch_spec()
    path = (root or envs_root()) / pins.key(torch)
    return _made_once(path, pins, f"for {pins.label} ({torch})", install_commands(path, pins, wheels, torch),
                      {"pins": dict(pins.versions), "torch": torch}, log)


def run_cells(env: Env, selection: list[str], results: Path, *, jobs: int = 1) -> subprocess.CompletedProcess:
    """pytest of the matrix in `env` with the selection's options; the records go to `results`.
    Its return code is pytest's (1: cells failed; 5: nothing selected)."""
    command = [str(env.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO_ROOT / "matrix"),
               *(["-n", str(jobs)] if jobs > 1 else []), *selection, "--results", str(results)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)


# --- environments made from a lock file (the release bump) ------------------------------------------

def locked_key(lock: Path, torch: str, extra_locks: tuple[Path, ...] = ()) -> str:
    """The directory name of a lock's environment: the lock's digest, and a hash of everything else it
    holds (torch, this project's pyproject.toml, the checkpoint packages' lock), so an edit of any of
    them makes a new one and an unchanged lock finds the one made before."""
    from harness.lockfile import digest

    parts = (REPO_ROOT / "pyproject.toml").read_bytes() + torch.encode()
    parts += b"".join(Path(p).read_bytes() for p in extra_locks)
    return f"lock-{digest(lock)}_{hashlib.sha256(parts).hexdigest()[:10]}"


def locked_install_commands(path: Path, lock: Path, torch: str, wheels: Path | None,
                            extra_locks: tuple[Path, ...] = ()) -> list[list[str]]:
    """As scripts/install-env.sh installs a release set, so that a bump measures what `make setup`
    would install: torch from the host with pip (the CPU build lies on this machine's disk, where uv
    does not look), then the lock with --no-deps --require-hashes (nothing resolved today), the
    checkpoint packages' lock likewise, and this project editable without its dependencies."""
    python = str(path / "bin" / "python")
    links = find_links(wheels, offline())
    uv = uv_binary()
    install = ([uv, "pip", "install", "-q", "--python", python, *links] if uv
               else [python, "-m", "pip", "install", "-q", *links])
    commands = [[sys.executable, "-m", "venv", str(path)]]
    if torch:
        commands.append([python, "-m", "pip", "install", "-q", *links, torch])
    for locked in (lock, *extra_locks):
        commands.append([*install, "--no-deps", "--require-hashes", "-r", str(locked)])
    commands.append([*install, "--no-deps", "--no-build-isolation", "-e", str(REPO_ROOT)])
    return commands


def ensure_locked_env(lock: Path, *, set_name: str, torch: str | None = None, wheels: Path | None = None,
                      root: Path | None = None, log: Callable[[str], None] = print) -> Env:
    """The environment of a lock file (a release set's, or a release bump's candidate), made once and
    kept by the lock's digest; it carries the lock stamp (harness/lockfile.py), so its records name
    the lock (`env.lock`) as `make setup`'s do. `set_name` is the release set the lock is of."""
    from harness.lockfile import lock_path, pinned_versions, write_stamp

    torch = torch_spec() if torch is None else torch
    checkpoints = lock_path("checkpoints")
    extra = (checkpoints,) if checkpoints.is_file() else ()
    path = (root or envs_root()) / locked_key(lock, torch, extra)
    held = {name: ",".join(sorted(v)) for name, v in pinned_versions(lock).items()
            if name in ("transformers", "peft")}
    pins = Pins.of(held)
    return _made_once(path, pins, f"from {lock} ({pins.label}, {torch or 'no torch'})",
                      locked_install_commands(path, lock, torch, wheels, extra),
                      {"lock": str(lock), "torch": torch}, log,
                      after=lambda: write_stamp(path, set_name, lock))
