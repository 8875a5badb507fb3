"""Where the harness keeps what it builds once and reuses: tiny checkpoints (harness/ckpt/tiny.py)
and the installed transformers' facts (harness/spec/release_facts.py).

A bottom module with no harness imports: the matrix stage (harness.spec) needs the cache to read
release facts, and the checkpoint stage (harness.ckpt) builds on the matrix stage, so the cache
cannot live in either without the first stage depending on a later one.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where the harness cache lives; COMPAT_HARNESS_CACHE moves it (CI, read-only homes)."""
    env = os.environ.get("COMPAT_HARNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "compat-harness"
