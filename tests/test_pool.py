"""The persistent rank pool on CPU (gloo): normal tasks, and each way a task can fail."""

from __future__ import annotations

import pytest

from harness.failures import classify
from harness.run.pool import RankPool, get_pool
from harness.run.ranks import PoolTaskError

TASKS = "tests.pool_tasks"


@pytest.fixture(scope="module")
def pool2():
    pool = RankPool(2, "cpu", error_grace_s=3)
    yield pool
    pool.close()


def _ok(pool) -> list[dict]:
    out = pool.run(f"{TASKS}:all_reduce_rank", timeout_s=60)
    assert [o["rank"] for o in out] == list(range(pool.world_size))
    assert all(o["sum"] == sum(range(pool.world_size)) for o in out)
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_normal_task(world_size):
    pool = get_pool(world_size, "cpu")
    pool.close()  # this worker's earlier tests may have loaded models there: start from new ranks
    starts = pool.starts
    first = _ok(pool)
    second = _ok(pool)
    assert pool.starts == starts + 1, "the pool must stay up between tasks"
    assert [o["pid"] for o in first] == [o["pid"] for o in second]
    assert [o["mesh_id"] for o in first] == [o["mesh_id"] for o in second], "mesh is cached"
    assert {o["backend"] for o in first} == {"gloo"}
    assert get_pool(world_size, "cpu") is pool


def test_error_on_one_rank_keeps_pool(pool2):
    _ok(pool2)
    starts = pool2.starts
    with pytest.raises(PoolTaskError) as info:
        pool2.run(f"{TASKS}:raise_on_rank", {"rank": 1}, timeout_s=30)
    err = info.value
    assert (err.category, err.rank) == ("error", 1)
    assert "boom on rank 1" in err.message
    assert "raise_on_rank" in err.rank_traceback and "ValueError" in err.rank_traceback
    assert classify(err)[0] == "error"
    assert not err.deliberate, "an unexpected exception keeps its traceback in pytest's output"
    _ok(pool2)
    assert pool2.starts == starts, "ranks that all came back keep the pool"


def test_cell_failure_category_travels(pool2):
    with pytest.raises(PoolTaskError) as info:
        pool2.run(f"{TASKS}:raise_on_rank", {"rank": 0, "category": "no-tp-plan"}, timeout_s=30)
    assert (info.value.category, info.value.rank) == ("no-tp-plan", 0)
    assert info.value.deliberate, "a rank's CellFailure is a verdict: pytest shows its message alone"
    _ok(pool2)


def test_error_mid_collective_rebuilds(pool2):
    _ok(pool2)
    starts = pool2.starts
    with pytest.raises(PoolTaskError) as info:
        pool2.run(f"{TASKS}:raise_on_rank", {"rank": 1, "collective": True}, timeout_s=30)
    assert (info.value.category, info.value.rank) == ("error", 1)
    assert "stuck in a collective" in info.value.message
    assert not pool2.alive
    _ok(pool2)
    assert pool2.starts == starts + 1


def test_crash_rebuilds(pool2):
    _ok(pool2)
    starts = pool2.starts
    with pytest.raises(PoolTaskError) as info:
        pool2.run(f"{TASKS}:die_on_rank", {"rank": 1, "code": 7, "others_sleep_s": 30}, timeout_s=30)
    assert (info.value.category, info.value.rank) == ("crash", 1)
    assert "exit code 7" in info.value.message
    assert not pool2.alive
    _ok(pool2)
    assert pool2.starts == starts + 1


def test_timeout_rebuilds(pool2):
    _ok(pool2)
    starts = pool2.starts
    with pytest.raises(PoolTaskError) as info:
        pool2.run(f"{TASKS}:sleep", {"seconds": 60}, timeout_s=2)
    assert info.value.category == "timeout"
    assert "pool_tasks.py" in info.value.rank_traceback, "the hung ranks' stacks are shown"
    assert not pool2.alive
    _ok(pool2)
    assert pool2.starts == starts + 1


def test_gpu_lease_is_all_or_nothing(tmp_path, monkeypatch):
    from harness.run.devices import lease_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setenv("COMPAT_HARNESS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    first = lease_gpus(2)
    assert first.visible_devices == "0,1"
    with pytest.raises(TimeoutError):
        lease_gpus(2, timeout_s=0.3, poll_s=0.1)  # only GPU 2 is free: take nothing, wait
    third = lease_gpus(1, timeout_s=1)
    assert third.devices == ["2"]
    first.release()
    with lease_gpus(2, timeout_s=1) as again:
        assert again.devices == ["0", "1"]
    third.release()


def test_a_rank_with_piled_up_threads_is_restarted_before_the_next_task(monkeypatch):
    """transformers' distributed loads leave process groups (and their threads) behind."""
    from harness.run import pool as pool_module

    monkeypatch.setattr(pool_module, "RECYCLE_THREADS", 1)  # any rank has more than one thread
    pool = RankPool(2, "cpu")
    try:
        first = _ok(pool)
        assert pool.recycles == 1 and not pool.alive, "over the limit: stopped after its task"
        second = _ok(pool)
        assert pool.starts == 2 and [o["pid"] for o in first] != [o["pid"] for o in second]
    finally:
        pool.close()
