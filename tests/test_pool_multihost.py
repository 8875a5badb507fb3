"""A rank pool over two "nodes" on this host: node 0 is this process, node 1 a real
`compat-harness pool-worker` process; they meet at a TCPStore rendezvous, as hosts would."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from harness.report.records import REPO_ROOT
from harness.run import rendezvous
from harness.run.pool import RankPool, get_pool
from harness.run.poolnode import shutdown_nodes
from harness.run.ranks import PoolTaskError

TASKS = "tests.pool_tasks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    spec = f"nnodes=2,nproc=1,endpoint=127.0.0.1:{free_port()},id=test"
    pool = RankPool(2, "cpu", error_grace_s=3, nodes=2, rendezvous=rendezvous.parse(spec, {}))
    log_path = tmp_path_factory.mktemp("node1") / "pool-worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "pool-worker", "--rdzv", spec, "--node-rank", "1",
             "--connect-timeout", "120"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    yield pool, worker, log_path
    pool.close()
    shutdown_nodes()
    try:
        assert worker.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()


def _ok(pool) -> list[dict]:
    out = pool.run(f"{TASKS}:all_reduce_rank", timeout_s=120)
    assert [o["rank"] for o in out] == [0, 1]
    assert all(o["sum"] == 1.0 and o["world_size"] == 2 for o in out)
    return out


def test_task_spans_two_nodes(two_nodes):
    pool, worker, log_path = two_nodes
    first = _ok(pool)
    second = _ok(pool)
    assert pool.starts == 1, "the pool stays up between tasks on both nodes"
    assert [o["pid"] for o in first] == [o["pid"] for o in second]
    local_pids = {proc.pid for proc in pool._procs}
    assert first[0]["pid"] in local_pids
    assert first[1]["pid"] not in local_pids, "rank 1 is a child of the pool-worker, not of node 0"
    assert "node 1: generation 1: starting ranks [1]" in log_path.read_text()


def test_error_on_remote_rank_keeps_pool(two_nodes):
    pool, *_ = two_nodes
    _ok(pool)
    starts = pool.starts
    with pytest.raises(PoolTaskError) as info:
        pool.run(f"{TASKS}:raise_on_rank", {"rank": 1}, timeout_s=60)
    assert (info.value.category, info.value.rank) == ("error", 1)
    assert "boom on rank 1" in info.value.message and "ValueError" in info.value.rank_traceback
    _ok(pool)
    assert pool.starts == starts


def test_crash_on_remote_rank_rebuilds(two_nodes):
    pool, *_ = two_nodes
    _ok(pool)
    starts = pool.starts
    with pytest.raises(PoolTaskError) as info:
        pool.run(f"{TASKS}:die_on_rank", {"rank": 1, "code": 7, "others_sleep_s": 30}, timeout_s=60)
    assert (info.value.category, info.value.rank) == ("crash", 1)
    assert "exit code 7" in info.value.message
    assert not pool.alive
    _ok(pool)
    assert pool.starts == starts + 1, "both nodes start a new generation of ranks"


def test_timeout_on_both_nodes_shows_remote_stacks(two_nodes):
    pool, *_ = two_nodes
    _ok(pool)
    starts = pool.starts
    with pytest.raises(PoolTaskError) as info:
        pool.run(f"{TASKS}:sleep", {"seconds": 60}, timeout_s=2)
    err = info.value
    assert err.category == "timeout" and "ranks [0, 1]" in err.message
    remote = err.rank_traceback.split("--- rank 1 log tail ---")[1]
    assert "pool_tasks.py" in remote, "node 1 dumps its hung rank's stack and sends the tail"
    _ok(pool)
    assert pool.starts == starts + 1


def test_rendezvous_spec_and_placement():
    rdzv = rendezvous.parse("nnodes=4,nproc=8,endpoint=node0:29500", {"SLURM_NODEID": "2"})
    assert (rdzv.nnodes, rdzv.nproc, rdzv.master_addr, rdzv.master_port, rdzv.node_rank) == (
        4, 8, "node0", 29500, 2)
    assert rendezvous.parse("", {}) is None
    assert rendezvous.placement(8, "cuda", rdzv) == (1, 8)  # fits one node: stays local
    assert rendezvous.placement(16, "cuda", rdzv) == (2, 8)
    assert rendezvous.placement(12, "cuda", rdzv) == (2, 6)
    assert rendezvous.capacity("cuda", rdzv) == 32
    with pytest.raises(rendezvous.RendezvousError, match="needs 5 nodes"):
        rendezvous.placement(40, "cuda", rdzv)
    with pytest.raises(rendezvous.RendezvousError, match="node_rank 4"):
        rendezvous.parse("nnodes=4,endpoint=a:1,node_rank=4", {})
    with pytest.raises(rendezvous.RendezvousError, match="unknown keys"):
        rendezvous.parse("nodes=2,endpoint=a:1", {})
    assert rendezvous.torchrun_args("nnodes=2,nproc=8,endpoint=node0:29500,id=j1") == [
        "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500",
        "--rdzv-id=j1"]
    assert rendezvous.torchrun_args("") == ["--standalone"]
    with pytest.raises(ValueError, match="endpoint"):
        rendezvous.torchrun_args("nnodes=2")


def test_get_pool_reads_the_rendezvous(monkeypatch):
    from harness.run import pool as pool_module

    monkeypatch.setenv(rendezvous.RDZV_ENV, "nnodes=2,nproc=2,endpoint=127.0.0.1:1")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setattr(pool_module, "_POOLS", {})
    assert get_pool(2, "cpu").nodes == 1, "ranks that fit one node stay on it"
    spread = get_pool(4, "cpu")
    assert (spread.nodes, spread.local_size, spread.rendezvous.endpoint) == (2, 2, "127.0.0.1:1")
    with pytest.raises(PoolTaskError, match="needs 3 nodes"):
        get_pool(6, "cpu")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.raises(PoolTaskError, match="one pytest process"):
        get_pool(4, "cpu")


def test_cuda_cells_larger_than_this_host_run_when_the_rendezvous_has_the_gpus(monkeypatch):
    from harness.run import hardware

    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 2)
    monkeypatch.delenv(rendezvous.RDZV_ENV, raising=False)
    assert hardware.missing_devices("cuda", 4) == "needs 4 GPUs, this machine has 2"
    monkeypatch.setenv(rendezvous.RDZV_ENV, "nnodes=2,nproc=2,endpoint=node0:29500")
    assert hardware.missing_devices("cuda", 4) is None
    assert hardware.missing_devices("cuda", 8) == "needs 8 GPUs, this machine has 2 and the rendezvous 4"
