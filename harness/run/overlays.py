"""Release trees for a host that brings its own Python and packages (the offline GPU host).

There a sweep makes no virtual environment: each release is a directory OVERLAY_ROOT/NAME-VERSION/,
a `pip install --no-deps --target` tree of that release's wheel, put first on the PYTHONPATH of
the host's own interpreter. The trees travel to the host unpacked, or are made there from wheels,
so before one is used it is checked against its own `*.dist-info/RECORD`: every file listed with a
sha256 must have it, and no module may lie in the tree that RECORD does not list. Then what runs
is the released files, byte for byte.

A transformers tree is about 55 MB and its wheel 10-14 MB, but consecutive releases share most of
their files: `pack_trees` writes several trees into one tar.xz with each file's versions side by
side (sorted by the path inside the tree, then the tree), so LZMA stores a file once and each later
release's changes (two 5.2x trees: 4.7 MB, one alone 4.5 MB). `unpack_trees` extracts it on the host
and verifies every tree it held, so what travelled compressed is proved to be the released files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


class TreeError(RuntimeError):
    """A release tree that is missing or differs from its RECORD: the message names the file."""


@dataclass(frozen=True)
class Verified:
    path: Path
    name: str
    version: str
    files: int  # files checked against their sha256


def tree_name(package: str, version: str) -> str:
    return f"{canonicalize_name(package)}-{version}"


def tree_path(root: Path, package: str, version: str) -> Path:
    return Path(root) / tree_name(package, version)


def overlay_versions(root: Path, package: str) -> list[str]:
    """The releases of `package` that have a tree under `root`, oldest first."""
    prefix = f"{canonicalize_name(package)}-"
    found = []
    for path in Path(root).glob(f"{prefix}*"):
        try:
            found.append(Version(path.name[len(prefix):]))
        except InvalidVersion:
            continue
    return [str(v) for v in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify_tree(path: Path, package: str | None = None, version: str | None = None) -> Verified:
    """Check a tree against the RECORD of its one `*.dist-info` (of `package` at `version`, if given)."""
    path = Path(path)
    if not path.is_dir():
        raise TreeError(f"{path}: no such release tree; make it with `compat-harness sweep-trees`")
    infos = sorted(path.glob("*.dist-info"))
    if package is not None:
        stem = re.sub(r"[-_.]+", "_", package).lower()
        infos = [i for i in infos if re.sub(r"[-_.]+", "_", i.name.split("-")[0]).lower() == stem]
    if len(infos) != 1:
        raise TreeError(f"{path}: holds {len(infos)} *.dist-info of {package or 'a package'} "
                        f"({', '.join(i.name for i in infos) or 'none'}); a release tree holds exactly one "
                        "(pip install --no-deps --target)")
    info = infos[0]
    name, found_version = info.name[: -len(".dist-info")].rsplit("-", 1)
    if version is not None and found_version != version:
        raise TreeError(f"{info}: is {name} {found_version}, not {version}: "
                        "the tree's name says another release")
    record = info / "RECORD"
    if not record.is_file():
        raise TreeError(f"{record}: missing; the tree cannot be checked (make it again with pip)")
    listed, checked = set(), 0
    with record.open(newline="") as handle:
        for row in csv.reader(handle):
            if not row:
                continue
            relative, hash_ = row[0], row[1] if len(row) > 1 else ""
            target = (path / relative).resolve()
            listed.add(target)
            if not hash_:
                continue  # RECORD itself, INSTALLER, REQUESTED: pip lists them without a hash
            if not target.is_relative_to(path.resolve()):
                continue  # a console script pip put beside the tree (../bin): never imported
            if not target.is_file():
                raise TreeError(f"{path}: {relative} is listed in {record.name} but missing")
            if _sha256(target) != hash_:
                raise TreeError(f"{path}: {relative} differs from {info.name}/RECORD ({hash_}): "
                                "not the released file")
            checked += 1
    for module in path.rglob("*"):
        if module.is_file() and "__pycache__" not in module.parts and module.resolve() not in listed \
                and module.suffix in (".py", ".pth", ".so"):
            raise TreeError(f"{path}: {module.relative_to(path)} is not listed in {info.name}/RECORD: "
                            "the tree holds a file the release does not")
    return Verified(path, name, found_version, checked)


def requirements(tree: Path) -> list:
    """The requirements a tree's release declares (its METADATA's Requires-Dist), those that apply to
    this interpreter without extras."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    (info,) = Path(tree).glob("*.dist-info")
    metadata = Parser().parsestr((info / "METADATA").read_text(errors="replace"))
    out = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            out.append(requirement)
    return out


def wheel_release(wheel: Path) -> tuple[str, str]:
    """A wheel file's (distribution, version) from its name."""
    parts = Path(wheel).name.split("-")
    return canonicalize_name(parts[0]), parts[1]


def make_tree(wheel: Path, root: Path, *, python: str = sys.executable) -> Verified:
    """`pip install --no-deps --target` of one wheel file into ROOT/NAME-VERSION (no index, no
    bytecode: the host's interpreter writes its own), kept when it is there and verifies."""
    name, version = wheel_release(wheel)
    target = tree_path(root, name, version)
    if target.is_dir():
        try:
            return verify_tree(target, name, version)
        except TreeError:
            shutil.rmtree(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
               "--disable-pip-version-check", "--target", str(partial), str(wheel)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise TreeError(f"pip install --target of {wheel} failed (exit {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-800:]}")
    partial.rename(target)
    return verify_tree(target, name, version)


def make_trees(wheels: Path, root: Path, packages: list[str] | None = None) -> list[Verified]:
    """A tree of every wheel in `wheels` (of `packages` only, if given)."""
    wanted = {canonicalize_name(p) for p in packages or []}
    chosen = [w for w in sorted(Path(wheels).glob("*.whl")) if not wanted or wheel_release(w)[0] in wanted]
    if not chosen:
        raise TreeError(f"{wheels}: no wheel{' of ' + ', '.join(sorted(wanted)) if wanted else ''} there")
    Path(root).mkdir(parents=True, exist_ok=True)
    return [make_tree(w, root) for w in chosen]


def tree_dirs(root: Path, packages: list[str] | None = None, releases: list[str] | None = None) -> list[Path]:
    """The trees under `root` (of `packages`, at `releases`, where given), in release order."""
    wanted = {canonicalize_name(p) for p in packages or []}
    out = []
    for path in Path(root).iterdir():
        if not path.is_dir() or path.name.endswith(".partial") or "-" not in path.name:
            continue
        name, version = path.name.rsplit("-", 1)
        if (not wanted or name in wanted) and (not releases or version in releases):
            out.append(path)
    try:
        return sorted(out, key=lambda p: (p.name.rsplit("-", 1)[0], Version(p.name.rsplit("-", 1)[1])))
    except InvalidVersion as exc:
        raise TreeError(f"{root}: a tree's name does not end in a release ({exc})") from None


def pack_trees(trees: list[Path], archive: Path) -> Path:
    """One tar.xz of verified trees, each file's versions side by side (bytecode left out)."""
    if not trees:
        raise TreeError(f"{archive}: no tree to pack")
    for tree in trees:
        verify_tree(tree)
    members = sorted((f.relative_to(tree).as_posix(), tree.name, f) for tree in trees
                     for f in tree.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    partial = Path(str(archive) + ".partial")
    with lzma.open(partial, "wb", preset=6) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for relative, tree_name_, path in members:
            tar.add(path, arcname=f"{tree_name_}/{relative}", recursive=False)
    partial.rename(archive)
    return archive


def unpack_trees(archive: Path, root: Path) -> list[Verified]:
    """Extract an archive of `pack_trees` under `root` and verify every tree it held (a tree already
    there is replaced)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:xz") as tar:
        names = sorted({m.name.split("/", 1)[0] for m in tar.getmembers()})
        for name in names:
            shutil.rmtree(root / name, ignore_errors=True)
        tar.extractall(root, filter="data")
    return [verify_tree(root / name) for name in names]
