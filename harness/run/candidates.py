"""Which release of each watched package a bump tries: the newest final release that is newer than
the default release set's.

torch is special on a host without CUDA: the index serves CUDA builds (several GB, and not what
this host can run), so its candidates come only from the local wheel directories (PIP_FIND_LINKS,
--wheels) and only as CPU builds (`+cpu`); a newer torch on the index alone is reported, not
watched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from harness.run.bisect import BisectError, index_versions

TORCH = "torch"


@dataclass(frozen=True)
class Candidate:
    """A watched package: its release in the baseline and the one to try (None: nothing to try, and
    `note` says why)."""

    package: str
    previous: str
    newest: str | None
    note: str = ""


def cuda_host() -> bool:
    """Whether this host can run a CUDA build (a driver is there)."""
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def local_dirs(wheels: Path | None) -> list[Path]:
    """The wheel directories of this host: --wheels, then PIP_FIND_LINKS's directories."""
    dirs = [Path(wheels)] if wheels else []
    return dirs + [Path(d) for d in os.environ.get("PIP_FIND_LINKS", "").split() if Path(d).is_dir()]


def torch_candidate(previous: str, local: list[str], index_newest: str | None, cuda: bool) -> Candidate:
    """torch's candidate: on a CUDA host the newest anywhere; on a CPU host the newest local `+cpu`
    build, and a note where the index has a newer (CUDA) build that no local directory offers."""
    base = Version(previous)
    if cuda:
        newest = max([*local, *([index_newest] if index_newest else [])], key=Version, default=None)
        if newest is None or Version(Version(newest).public) <= Version(base.public):
            return Candidate(TORCH, previous, None, f"{previous} is the newest release")
        return Candidate(TORCH, previous, newest)
    cpu = [
        v for v in local if Version(v).local == "cpu" and Version(Version(v).public) > Version(base.public)
    ]
    if cpu:
        return Candidate(TORCH, previous, max(cpu, key=Version))
    if index_newest and Version(Version(index_newest).public) > Version(base.public):
        return Candidate(
            TORCH,
            previous,
            None,
            f"torch {index_newest} on the index is a CUDA build; not watched on a CPU host "
            "(put its +cpu wheel in a PIP_FIND_LINKS directory or --wheels to watch it)",
        )
    return Candidate(TORCH, previous, None, f"{previous} is the newest CPU build")


def newest_candidate(
    package: str, previous: str, wheels: Path | None, wanted: str | None = None
) -> Candidate:
    """The release to try: `wanted` (given on the command line), else the newest final release on the
    index (or in --wheels) when it is newer than `previous`."""
    if wanted:
        if Version(wanted) <= Version(previous):
            return Candidate(package, previous, None, f"{wanted} is not newer than {previous}")
        return Candidate(package, previous, wanted)
    if package == TORCH:
        local = [v for d in local_dirs(wheels) for v in index_versions(TORCH, d)]
        index_newest = None
        if wheels is None:
            try:
                index_newest = index_versions(TORCH)[-1]
            except (BisectError, IndexError):
                index_newest = None
        return torch_candidate(previous, local, index_newest, cuda_host())
    try:
        newest = index_versions(package, wheels)[-1]
    except IndexError:
        return Candidate(package, previous, None, "no final release found")
    if Version(newest) <= Version(previous):
        return Candidate(package, previous, None, f"{previous} is the newest release")
    return Candidate(package, previous, newest)
