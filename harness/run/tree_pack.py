"""Many releases in one small archive, for an offline host: unpacked release trees (harness/run/overlay.py)
packed once per distinct file.

Forty-five transformers releases unpack to 2.1 GB, but only a quarter of their files differ from
one release to another, and a changed file is mostly its previous version. The archive keeps each
distinct file once (named by its sha256), ordered by its path in the release and then by release,
so xz sees the versions of one file side by side, plus a manifest of which file goes where in
which tree. `unpack` rebuilds the trees; the sweep then checks every tree against its own RECORD
(the released wheel's hashes), so the transport cannot change what runs.

    python -m harness.run.tree_pack pack ROOT ARCHIVE.tar.xz [NAME ...]   # NAME: tree dirs (default all)
    python -m harness.run.tree_pack unpack ARCHIVE.tar.xz ROOT
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"


def pack(root: Path, names: list[str], archive: Path) -> dict:
    """Write `archive` holding the trees `names` under `root`; return counts for the log."""
    manifest: dict[str, list[list]] = {}
    blobs: dict[str, tuple[str, str, Path]] = {}  # digest -> (path in tree, tree, file)
    total = 0
    for name in names:
        entries = manifest.setdefault(name, [])
        for directory, _, files in os.walk(root / name):
            for file in sorted(files):
                path = Path(directory) / file
                rel = str(path.relative_to(root / name))
                data = path.read_bytes()
                total += len(data)
                digest = hashlib.sha256(data).hexdigest()
                entries.append([rel, digest, path.stat().st_mode & 0o777])
                blobs.setdefault(digest, (rel, name, path))
    order = sorted(blobs.items(), key=lambda item: (item[1][0], item[1][1]))
    unique = 0
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        text = json.dumps(manifest, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for digest, (_, _, path) in order:
            data = path.read_bytes()
            unique += len(data)
            info = tarfile.TarInfo(f"blobs/{digest}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {"trees": len(names), "bytes": total, "distinct_bytes": unique,
            "archive_bytes": archive.stat().st_size}


def unpack(archive: Path, root: Path) -> list[str]:
    """Rebuild every tree of `archive` under `root` (a tree already there is left as it is)."""
    root.mkdir(parents=True, exist_ok=True)
    blobs = root / ".blobs"
    blobs.mkdir(exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())
        for member in tar:
            if member.name.startswith("blobs/"):
                target = blobs / Path(member.name).name
                if not target.exists():
                    target.write_bytes(tar.extractfile(member).read())
    made = []
    for name, entries in manifest.items():
        if (root / name).exists():
            continue
        partial = root / f".{name}.partial"
        for rel, digest, mode in entries:
            path = partial / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes((blobs / digest).read_bytes())
            os.chmod(path, mode)
        partial.rename(root / name)
        made.append(name)
    return made


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "pack":
        root = Path(argv[1])
        names = argv[3:] or sorted(p.name for p in root.iterdir()
                                   if p.is_dir() and not p.name.startswith("."))
        print(json.dumps(pack(root, names, Path(argv[2]))))
        return 0
    if len(argv) == 3 and argv[0] == "unpack":
        made = unpack(Path(argv[1]), Path(argv[2]))
        print(f"{len(made)} trees made under {argv[2]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
