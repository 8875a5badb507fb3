"""Releases laid over a host's own packages: one release of transformers (or peft) on a host that
has another, without a package index.

The GPU host is offline and its image fixes torch and most libraries. A sweep there carries each
release it runs as an unpacked tree (`ROOT/<dist>-<version>/`, what `pip install --no-deps --target`
makes of the released wheel, checked against its own RECORD by harness/run/sweep.py) and puts the
trees first on PYTHONPATH. Which trees a release needs besides its own is decided here, as pip
would: every requirement of a chosen tree (its METADATA) that the host's installed version does not
satisfy takes the newest carried tree that does (transformers 5.0 asks for tokenizers <=0.23.0
where an image has 0.23.2). A requirement neither can satisfy is an OverlayError naming it, so an
environment is never half right.
"""

from __future__ import annotations

import email.parser
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


class OverlayError(RuntimeError):
    """The carried trees and the host's packages cannot satisfy a release's requirements."""


@dataclass(frozen=True)
class Tree:
    """One unpacked release: the directory to put on PYTHONPATH, its distribution and version."""

    path: Path
    name: str
    version: str

    def requirements(self) -> list[Requirement]:
        """Its Requires-Dist entries that apply without extras on this interpreter."""
        info = next(self.path.glob("*.dist-info"))
        message = email.parser.Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        out = []
        for line in message.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(req)
        return out


def trees(root: Path) -> list[Tree]:
    """Every tree under `root` (a directory holding exactly one *.dist-info)."""
    found = []
    for path in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        infos = list(path.glob("*.dist-info"))
        if len(infos) != 1:
            continue
        name, _, version = infos[0].name[: -len(".dist-info")].rpartition("-")
        found.append(Tree(path, canonicalize_name(name), version))
    return found


def host_version(name: str) -> str | None:
    """The host's installed release of `name` (as this interpreter sees it without any overlay)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plan(root: Path, pins: dict[str, str], host=host_version) -> list[Tree]:
    """The trees that make `pins` importable over the host's packages: the pinned trees first, then
    each carried tree a requirement needs (newest first that fits)."""
    carried = trees(root)
    chosen: dict[str, Tree] = {}
    for name, version in pins.items():
        match = [t for t in carried if t.name == canonicalize_name(name) and t.version == version]
        if not match:
            raise OverlayError(f"no tree of {name} {version} under {root}: carry it (pip install --no-deps "
                               f"--target {root}/{name}-{version} <its wheel>)")
        chosen[match[0].name] = match[0]
    queue = list(chosen.values())
    while queue:
        tree = queue.pop(0)
        for req in tree.requirements():
            name = canonicalize_name(req.name)
            if name in chosen:
                if not req.specifier.contains(chosen[name].version, prereleases=True):
                    raise OverlayError(f"{tree.name} {tree.version} needs {req}, but {name} "
                                       f"{chosen[name].version} is chosen")
                continue
            installed = host(name)
            if installed is not None and req.specifier.contains(installed, prereleases=True):
                continue
            fits = sorted((t for t in carried if t.name == name
                           and req.specifier.contains(t.version, prereleases=True)),
                          key=lambda t: Version(t.version), reverse=True)
            if not fits:
                have = f"the host has {installed}" if installed else "the host lacks it"
                raise OverlayError(f"{tree.name} {tree.version} needs {req} ({have}) and no tree under "
                                   f"{root} fits: carry one")
            chosen[name] = fits[0]
            queue.append(fits[0])
    return list(chosen.values())


def pythonpath(chosen: list[Tree]) -> str:
    return ":".join(str(t.path) for t in chosen)
