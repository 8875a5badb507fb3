"""Checkpoint files on disk: written atomically, verified before they are trusted.

A checkpoint is written into a staging directory next to its target and renamed into place
only when complete, so a failure halfway (an exception, a kill, a full disk) never leaves a
half-written checkpoint where a good one was. A manifest of sha256 sums is written last; on
load every file is checked against it, so a corrupt or truncated file is reported by name
instead of surfacing as an obscure unpickling or safetensors error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "compat_harness_manifest.json"
STAGING_MARK = ".staging-"


class CheckpointCorrupt(Exception):
    """A checkpoint file is missing, truncated or altered; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> None:
    entries = {str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
               for p in _files(root)}
    (root / MANIFEST).write_text(json.dumps(entries, indent=1, sort_keys=True))


def verify(root: Path | str) -> None:
    """Raise CheckpointCorrupt naming the first file that does not match the manifest."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise CheckpointCorrupt(f"{manifest_path}: manifest missing; the checkpoint was never completed")
    try:
        entries = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointCorrupt(f"{manifest_path}: unreadable manifest ({exc})") from None
    for name, entry in sorted(entries.items()):
        path = root / name
        if not path.exists():
            raise CheckpointCorrupt(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointCorrupt(f"{path}: truncated or grown ({size} bytes, expected {entry['bytes']})")
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointCorrupt(f"{path}: contents do not match the sha256 in {MANIFEST}")


@contextlib.contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces `target` whole, on failure it vanishes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}{STAGING_MARK}", dir=target.parent))
    try:
        yield staging
        write_manifest(staging)
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f"{target.name}{STAGING_MARK}old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def collective_atomic_directory(target: Path | str) -> Iterator[Path]:
    """atomic_directory for a checkpoint that every rank writes a part of (a sharded DCP save).

    Rank 0 owns the staging directory and the rename; every rank writes into the same staging
    directory (the ranks share a filesystem), and the rename waits until all have finished. A
    rank that fails leaves the others waiting in a barrier; the pool's timeout ends that, and
    the staging directory never replaces the target.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        with atomic_directory(target) as staging:
            yield staging
        return
    if dist.get_rank() == 0:
        with atomic_directory(target) as staging:
            dist.broadcast_object_list([str(staging)], src=0)
            yield staging
            dist.barrier()  # every rank's part is written
    else:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        yield Path(box[0])
        dist.barrier()
    dist.barrier()  # renamed into place before anyone reads it


def recover(target: Path | str) -> None:
    """Clean up after a writer that was killed: restore the previous checkpoint if the kill fell
    between moving it aside and moving the new one in, and drop unfinished staging dirs."""
    target = Path(target)
    olds = sorted(target.parent.glob(f"{target.name}{STAGING_MARK}old-*"))
    if olds and not target.exists():
        os.replace(olds[-1], target)
        olds = olds[:-1]
    for stale in [*olds, *target.parent.glob(f"{target.name}{STAGING_MARK}*")]:
        if stale.exists():
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in _files(root) + [root / MANIFEST]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
