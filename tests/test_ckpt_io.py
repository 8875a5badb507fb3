"""Checkpoint safety: a kill halfway keeps the old checkpoint; a corrupt file is named on load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.ckpt.atomic import CheckpointCorrupt, atomic_directory, verify
from harness.ckpt.models import load_model, reload_pretrained
from harness.ckpt.tiny import tiny_checkpoint
from harness.failures import CellFailure
from harness.spec.load import load_matrix
from harness.stacks.native.saving import export_hf, load_dcp, save_dcp


@pytest.fixture(scope="module")
def llama():
    matrix = load_matrix()
    arch = matrix.architectures["LlamaForCausalLM"]
    return arch, load_model(arch, tiny_checkpoint(arch, matrix), "float32", "cpu")


def test_truncated_shard_is_named_on_load(llama, tmp_path, capsys):
    arch, model = llama
    export_hf(model, tmp_path / "hf", "200KB")
    shard = sorted((tmp_path / "hf").glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointCorrupt) as info:
        reload_pretrained(arch, tmp_path / "hf", "cpu")
    print(f"error shown to the user: {info.value}")
    assert str(shard) in str(info.value) and "truncated" in str(info.value)
    assert str(shard) in capsys.readouterr().out


def test_altered_dcp_file_is_named_on_load(llama, tmp_path):
    _, model = llama
    save_dcp(model, tmp_path / "dcp")
    data_file = sorted((tmp_path / "dcp").glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorrupt, match=f"{data_file}: contents do not match the sha256"):
        load_dcp(model, tmp_path / "dcp")


def test_missing_manifest_means_never_completed(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointCorrupt, match="manifest missing"):
        verify(tmp_path / "ckpt")


def test_exception_halfway_leaves_the_old_checkpoint(llama, tmp_path):
    arch, model = llama
    export_hf(model, tmp_path / "hf", "5GB")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "hf") as staging:
        (staging / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before
    verify(tmp_path / "hf")
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.ckpt.atomic import atomic_directory
    from harness.spec.load import load_matrix
    from harness.ckpt.models import load_model
    from harness.ckpt.tiny import tiny_checkpoint
    matrix = load_matrix()
    arch = matrix.architectures["LlamaForCausalLM"]
    model = load_model(arch, tiny_checkpoint(arch, matrix), "float32", "cpu")
    with atomic_directory(Path(sys.argv[1])) as staging:
        model.save_pretrained(staging, max_shard_size="200KB")   # the new weights are written...
        Path(sys.argv[2]).write_text("halfway")
        time.sleep(120)                                           # ...and the kill lands here
""")


def test_killed_save_leaves_the_old_checkpoint_intact(llama, tmp_path):
    arch, model = llama
    target, marker = tmp_path / "hf", tmp_path / "halfway"
    export_hf(model, target, "5GB")
    old = {p.name: p.read_bytes() for p in target.iterdir()}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert writer.poll() is None, "the writer died before reaching the middle of its save"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old
    verify(target)
    reloaded = reload_pretrained(arch, target, "cpu")
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("hf", "halfway")]
    assert leftovers and all(".staging-" in n for n in leftovers)  # what the kill left behind...
    with atomic_directory(target) as staging:  # ...is cleared by the next save
        model.save_pretrained(staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halfway", "hf"]


def test_reload_of_a_non_checkpoint_is_a_check_failure(llama, tmp_path):
    arch, _ = llama
    with atomic_directory(tmp_path / "empty") as staging:
        (staging / "README").write_text("not a model")
    with pytest.raises(CellFailure, match="from_pretrained"):
        reload_pretrained(arch, tmp_path / "empty", "cpu")


def test_sharded_save_by_two_ranks_is_atomic_and_verified(llama, tmp_path):
    """A DCP checkpoint written by 2 FSDP2 ranks: complete and verified, or not there at all."""
    from harness.run.pool import get_pool
    from harness.run.ranks import PoolTaskError

    arch, model = llama
    target = tmp_path / "dcp"
    pool = get_pool(2, "cpu")
    files = pool.run("tests.layout_tasks:fsdp2_dcp_save", {"target": str(target)}, 120)[0]
    assert sum(name.endswith(".distcp") for name in files) == 2, files  # one file per rank
    verify(target)
    old = {p.name: p.read_bytes() for p in target.iterdir()}

    with pytest.raises(PoolTaskError, match="disk full"):
        pool.run("tests.layout_tasks:fsdp2_dcp_save", {"target": str(target), "fail_rank": 1}, 60)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old, "the failed save replaced nothing"
    load_dcp(model, target)  # the old sharded checkpoint still loads into one unsharded model

    shard = sorted(target.glob("*.distcp"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointCorrupt) as info:
        load_dcp(model, target)
    print(f"error shown to the user: {info.value}")
    assert str(shard) in str(info.value) and "truncated" in str(info.value)
