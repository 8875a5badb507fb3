"""Fetch what remote-code rows need into the HF cache, on a machine with hub access.

The harness itself never downloads (harness/ckpt/implementations.py reads the cache offline). This
is the other half: `compat-harness prefetch --code-only` takes each remote-code row's config, code
and tokenizer files (a few hundred kB a row) with `huggingface_hub.snapshot_download` and
`allow_patterns`, so that every remote-code row can run its tiny tier offline once the cache is
copied over; `--weights` adds the row's real checkpoint. `--dry-run` prints the plan only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.spec.matrix import Architecture, Matrix

# A remote-code repo's code, config and tokenizer: what its tiny tier needs.
CODE_PATTERNS = ("config.json", "generation_config.json", "*.py", "tokenizer*", "special_tokens_map.json",
                 "*.model", "*.tiktoken", "vocab*", "merges.txt", "added_tokens.json")
# What the real tier needs on top: the weights (safetensors, as transformers 5 prefers) and their index.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


@dataclass(frozen=True)
class Fetch:
    """One snapshot_download call: which row needs it, the repo and the file patterns."""

    row: str
    repo: str
    patterns: tuple[str, ...]


def plan(matrix: Matrix, rows: Iterable[str] = (), weights: bool = False) -> list[Fetch]:
    """The downloads for the remote-code rows among `rows` (none named: every remote-code row)."""
    wanted = set(rows)
    out = []
    for arch in sorted(matrix.architectures.values(), key=lambda a: a.name):
        if not arch.trust_remote_code or (wanted and arch.name not in wanted):
            continue
        out.append(Fetch(arch.name, arch.remote_repo, CODE_PATTERNS))
        if weights:
            out.append(Fetch(arch.name, arch.checkpoint_id, CODE_PATTERNS + WEIGHT_PATTERNS))
    return out


def not_remote(matrix: Matrix, rows: Iterable[str]) -> list[Architecture]:
    """Named rows that run no remote code (prefetch has nothing to fetch for them)."""
    return [matrix.architectures[name] for name in rows if not matrix.architectures[name].trust_remote_code]


def fetch(fetches: Iterable[Fetch], say: Callable[[str], None] = print) -> list[tuple[Fetch, str]]:
    """Run the downloads, one line of progress each; the ones that failed, with the hub's message."""
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import snapshot_download

    failed = []
    todo = list(fetches)
    for i, item in enumerate(todo, 1):
        try:
            path = snapshot_download(item.repo, allow_patterns=list(item.patterns))
        except Exception as exc:  # noqa: BLE001 - one repo's failure must not stop the others
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            failed.append((item, message))
            say(f"[{i}/{len(todo)}] {item.row}: {item.repo} FAILED: {message}")
            continue
        say(f"[{i}/{len(todo)}] {item.row}: {item.repo} -> {path}")
    return failed
