"""Real checkpoints, resolved from the local Hugging Face cache only: nothing is downloaded.

A missing checkpoint is not an error of the model under test, so it becomes a skip whose
message names the id and says how to pre-fetch it on a machine that has network access.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.failures import CellFailure


def cache_dir() -> str:
    """The HF hub cache, read now, not at import: tests and users may point it elsewhere."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def cached_snapshot(repo_id: str) -> Path:
    """The snapshot directory of `repo_id`'s main ref in the local HF cache, never a download (the
    hub is set offline); huggingface_hub's own exception when it is not there."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir()))


def resolve_offline(repo_id: str) -> Path:
    """The snapshot directory of `repo_id` in the local HF cache, or a checkpoint-absent skip."""
    try:
        path = cached_snapshot(repo_id)
    except Exception as exc:  # noqa: BLE001 - every lookup failure means "not in the cache"
        cache = cache_dir()
        raise CellFailure(
            "checkpoint-absent",
            f"{repo_id} is not in the local Hugging Face cache ({cache}); pre-fetch it on a "
            f"machine with network access with `hf download {repo_id}` and copy the cache "
            f"folder here (or point HF_HUB_CACHE at it). Lookup said: {type(exc).__name__}",
        ) from None
    if not (path / "config.json").exists():
        raise CellFailure(
            "checkpoint-absent", f"{repo_id}: cached snapshot {path} has no config.json"
        )
    return path
