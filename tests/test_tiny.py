"""Tiny checkpoints: built from the config class, content-addressed, safe under concurrency."""

from __future__ import annotations

import multiprocessing
import os

from harness.cache import cache_root
from harness.ckpt.tiny import build_tiny_config, tiny_checkpoint
from harness.spec.load import load_matrix


def _build(cache: str, queue) -> None:
    os.environ["COMPAT_HARNESS_CACHE"] = cache
    matrix = load_matrix()
    queue.put(str(tiny_checkpoint(matrix.architectures["LlamaForCausalLM"], matrix)))


def test_tiny_config_applies_generic_shrink_and_row_overrides():
    matrix = load_matrix()
    config = build_tiny_config(matrix.architectures["LlamaForCausalLM"], matrix)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.vocab_size == 512


def test_cache_is_content_addressed_and_shared_by_concurrent_builders(tmp_path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    builders = [ctx.Process(target=_build, args=(str(cache), queue)) for _ in range(2)]
    for proc in builders:
        proc.start()
    paths = {queue.get(timeout=240) for _ in builders}
    for proc in builders:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(paths) == 1
    built = [p for p in (cache / "tiny").iterdir() if p.is_dir()]
    assert [str(p) for p in built] == list(paths), "a half-written staging dir was left behind"
    assert (built[0] / "config.json").exists()


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPAT_HARNESS_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
