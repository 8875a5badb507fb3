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
from pathlib import Path

from harness.ckpt.hub_cache import cache_dir
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


@dataclass(frozen=True)
class Outcome:
    """What one snapshot_download did: `downloaded` (files written into the cache), `cached` (the
    snapshot was already there and nothing was written, e.g. offline or unreachable hub with the
    repo cached) or `failed` (with the hub's message)."""

    fetch: Fetch
    status: str
    detail: str


def _cache_files(repo: str) -> set[tuple[str, int]]:
    """The files the HF cache holds for `repo` (name and size), to tell a download from a cache hit."""
    root = Path(cache_dir()) / f"models--{repo.replace('/', '--')}"
    if not root.exists():
        return set()
    return {(str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")}


def fetch(fetches: Iterable[Fetch], say: Callable[[str], None] = print) -> list[Outcome]:
    """Run the downloads, one line of progress each, saying whether anything was downloaded."""
    os.environ.pop("HF_HUB_OFFLINE", None)
    from huggingface_hub import snapshot_download

    outcomes = []
    todo = list(fetches)
    for i, item in enumerate(todo, 1):
        before = _cache_files(item.repo)
        try:
            path = snapshot_download(item.repo, allow_patterns=list(item.patterns), cache_dir=cache_dir())
        except Exception as exc:  # noqa: BLE001 - one repo's failure must not stop the others
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            outcomes.append(Outcome(item, "failed", message))
            say(f"[{i}/{len(todo)}] {item.row}: {item.repo} FAILED: {message}")
            continue
        new = _cache_files(item.repo) - before
        if new:
            outcomes.append(Outcome(item, "downloaded", f"{len(new)} file(s)"))
            say(f"[{i}/{len(todo)}] {item.row}: {item.repo} -> {path} ({len(new)} file(s) downloaded)")
        else:
            outcomes.append(Outcome(item, "cached", ""))
            say(f"[{i}/{len(todo)}] {item.row}: {item.repo} found in the cache, nothing downloaded -> {path}")
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    """The closing line: how many fetches downloaded, were found in the cache, failed."""
    statuses = ("downloaded", "cached", "failed")
    count = {status: sum(o.status == status for o in outcomes) for status in statuses}
    return (f"{len(outcomes)} fetch(es): {count['downloaded']} downloaded, {count['cached']} found in the "
            f"cache (nothing downloaded), {count['failed']} failed")
