"""A persistent pool of N ranks: imports and process-group init are paid once, not once per cell.

    pool = get_pool(world_size=2, device_type="cpu")
    per_rank = pool.run("harness.stacks.native.stack:fixed_batch_fit_task", payload, timeout_s=120)

`get_pool` keeps one pool per (world size, device type) in this process (so each pytest-xdist
worker has its own). A pool starts N spawned worker processes; each initialises
torch.distributed once (gloo on CPU; NCCL on CUDA, one GPU per rank) through a TCPStore that
the parent hosts on a port the kernel picks, so pools of different workers never share a
port. A worker then loops: receive (task, payload), call `fn(payload, ctx)`, send the value back.
A task is named "module:function" so that the spawned workers import it themselves.

How a task's failure becomes a category (PoolTaskError is a CellFailure, so the runner's
`classify` already understands it; the failing rank's own traceback is in `rank_traceback`):
- a rank raises: the category `failures.classify` gives on that rank (a CellFailure's own;
  "harness-error" when our code raised it; "oom"; else "error"), with that rank's traceback.
  The other ranks get `error_grace_s` to finish. If they all return, the pool is kept, after a
  health check (an all-reduce) proves the process group still agrees; if some do not return
  (they wait in a collective the failed rank never joined) or the check fails, the pool is torn
  down and rebuilt on the next call. Gloo and NCCL cannot cancel a pending collective, so
  killing the processes is the one reliable abort.
- a rank dies (os._exit, segfault, OOM killer): category "crash", with its exit code and the
  tail of its log; the pool is torn down.
- the call outlives `timeout_s`: category "timeout". Each hung rank first dumps every thread's
  stack (faulthandler on SIGUSR1) into its log, so the message shows where it hung; then the
  pool is torn down.
A torn-down pool starts again on its next `run`, so the test session goes on.

Each rank's stdout and stderr go to a log file in the pool's temp dir (pytest's capture
would otherwise swallow them into whichever test started the pool).

More than one host: when COMPAT_HARNESS_RDZV names a rendezvous (harness/run/rendezvous.py) and a
pool's world size is larger than one host's `nproc`, the pool spreads its ranks evenly over
the fewest nodes that hold them. This process (node 0) hosts the TCPStore at the rendezvous
endpoint and its own ranks; each other node runs `compat-harness pool-worker`
(harness/run/poolnode.py), which starts its ranks when asked and relays tasks and replies through
that store. The failure rules above hold for remote ranks too: the node reports a rank that
died, dumps the stacks of hung ranks on a timeout, and kills its ranks when the pool is torn
down.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

from harness.run.devices import lease_gpus
from harness.run.poolnode import POLL_S, RemoteRanks, shutdown_nodes
from harness.run.ranks import (
    LOG_TAIL_LINES,
    PoolTaskError,
    RankSpec,
    exit_text,
    read_tail,
    receive,
    request_stacks,
    spawn_rank,
    stop_ranks,
)
from harness.run.rendezvous import RendezvousError, from_env, placement

# A rank whose thread count passes this is restarted before the next task. transformers builds a
# new device mesh (new process groups, each with its own gloo threads) at every distributed load,
# and a persistent rank loads hundreds of models: without a limit the threads pile up until the
# host refuses new ones ("can't start new thread"), which is no verdict on any cell.
RECYCLE_THREADS = int(os.environ.get("COMPAT_HARNESS_RANK_THREADS", "400"))


class RankPool:
    """N ranks with one process group, started lazily and rebuilt after a crash or a hang.

    `nodes` > 1 spreads them over that many hosts of `rendezvous` (world_size / nodes each):
    ranks 0.. on this host, the others on the nodes that run `compat-harness pool-worker`.
    """

    def __init__(self, world_size: int, device_type: str = "cpu", start_timeout_s: float = 300,
                 error_grace_s: float = 10, preload: tuple[str, ...] = (), nodes: int = 1,
                 rendezvous=None):
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
        if nodes > 1 and (rendezvous is None or world_size % nodes):
            raise ValueError(f"{nodes} nodes need a rendezvous and a world size they divide, "
                             f"got {rendezvous} and {world_size}")
        self.world_size = world_size
        self.device_type = device_type
        self.start_timeout_s = start_timeout_s
        self.error_grace_s = error_grace_s
        self.preload = tuple(preload)  # modules every rank imports at start, before it is ready
        self.nodes = nodes
        self.rendezvous = rendezvous
        self.local_size = world_size // nodes  # ranks 0..local_size-1 run on this host
        self.starts = 0  # how many times the ranks were (re)started
        self.recycles = 0  # how many of those restarts were for piled-up threads (RECYCLE_THREADS)
        self._threads = 0  # the most threads a rank reported since the ranks started
        self.start_s: float | None = None
        self._procs: list = []
        self._conns: list = []
        self._lease = None
        self._remote = None  # poolnode.RemoteRanks while the ranks of other nodes are up
        self._log_dir = Path(tempfile.mkdtemp(prefix=f"compat-pool-{device_type}{world_size}-"))
        self._next_id = 0

    @property
    def alive(self) -> bool:
        return bool(self._procs)

    def log_path(self, rank: int) -> Path:
        return self._log_dir / f"rank{rank}.log"

    def log_tail(self, rank: int, lines: int = LOG_TAIL_LINES) -> str:
        if rank >= self.local_size:
            return self._remote.tail(rank) if self._remote else ""
        return read_tail(self.log_path(rank), lines)

    # -- lifecycle --

    def start(self) -> None:
        import torch.distributed as dist

        started = time.perf_counter()
        self._threads = 0
        visible = None
        if self.device_type == "cuda":
            self._lease = lease_gpus(self.local_size)
            visible = self._lease.visible_devices
        if self.nodes == 1:
            store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True,
                                  wait_for_workers=False)
            self._store = store  # the workers' rendezvous lives as long as the pool
            addr, port, prefix = "127.0.0.1", store.port, ""
        else:
            self._remote = RemoteRanks.announce(self.rendezvous, self.world_size, self.nodes,
                                                self.device_type, self.preload)
            addr, port = self.rendezvous.master_addr, self.rendezvous.master_port
            prefix = self._remote.group_prefix
        spec = RankSpec(self.world_size, self.local_size, self.device_type, addr, port, prefix,
                        visible, self.preload)
        for rank in range(self.local_size):
            proc, conn = spawn_rank(rank, rank, spec, self.log_path(rank))
            self._procs.append(proc)
            self._conns.append(conn)
        self.starts += 1
        replies = self._collect(None, self.start_timeout_s, what="start")
        self.start_s = time.perf_counter() - started
        del replies

    def close(self) -> None:
        """Stop the ranks (politely if they are idle, by SIGKILL otherwise) and free the GPUs."""
        if self._remote is not None:
            self._remote.end("close")
        self._kill(polite_s=5)

    def _kill(self, polite_s: float = 0) -> None:
        if self._remote is not None:
            self._remote.end("kill")  # the other nodes kill their ranks
            self._remote = None
        stop_ranks(self._procs, self._conns, polite_s)
        self._procs, self._conns = [], []
        self._store = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # -- running tasks --

    def run(self, task: str, payload: dict | None = None, timeout_s: float = 600) -> list:
        """Call `task(payload, ctx)` on every rank; return the per-rank values, or raise PoolTaskError."""
        if self.alive and not (all(proc.is_alive() for proc in self._procs)
                               and (self._remote is None or self._remote.healthy())):
            self._kill()  # a rank died between calls
        if not self.alive:
            self.start()
        self._next_id += 1
        task_id = self._next_id
        for rank, conn in enumerate(self._conns):
            try:
                conn.send((task_id, task, payload or {}))
            except (BrokenPipeError, ConnectionResetError) as exc:
                self._kill()
                raise PoolTaskError("crash", f"rank {rank} is gone, cannot send {task}: {exc}", rank) from exc
        if self._remote is not None:
            self._remote.post(task_id, task, payload or {})
        values = self._collect(task_id, timeout_s, what=task)
        if self._threads > RECYCLE_THREADS:
            self.close()  # started afresh by the next run (see RECYCLE_THREADS)
            self.recycles += 1
        return values

    def _collect(self, task_id: int | None, timeout_s: float, what: str) -> list:
        """Wait for every rank's reply to `task_id` (None: the start-up 'ready' message)."""
        deadline = time.monotonic() + timeout_s
        values: dict[int, object] = {}
        # (rank, category, message, traceback, metrics, whether the rank raised a CellFailure)
        errors: list[tuple[int, str, str, str, dict, bool]] = []
        pending = set(range(self.world_size))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            local = {r for r in pending if r < self.local_size}
            remote = pending - local
            watched = {self._conns[r]: r for r in local} | {self._procs[r].sentinel: r for r in local}
            wait_s = min(remaining, POLL_S) if remote else remaining
            replies = []
            if watched:
                for ready in wait(list(watched), timeout=wait_s):
                    rank = watched[ready]
                    replies.append((rank, receive(self._conns[rank])))
            else:
                time.sleep(wait_s)
            if remote and self._remote is not None:
                replies += self._remote.replies(task_id, remote)
            for rank, reply in replies:
                if rank not in pending:
                    continue
                if reply is None:  # the sentinel fired, or the pipe closed, with nothing left to read
                    self._procs[rank].join(timeout=1)
                    reply = ("dead", task_id, exit_text(self._procs[rank].exitcode), self.log_tail(rank))
                if reply[0] == "dead":
                    self._kill()
                    raise PoolTaskError("crash", f"rank {rank} died during {what} ({reply[2]}); "
                                                 "pool torn down", rank, reply[3])
                if task_id is None or reply[1] == task_id:
                    pending.discard(rank)
                    if reply[0] == "error":
                        errors.append((rank, *reply[2:5], reply[5] if len(reply) > 5 else {},
                                       len(reply) > 6 and bool(reply[6])))
                        deadline = min(deadline, time.monotonic() + self.error_grace_s)
                    else:
                        values[rank] = reply[-1] if task_id is not None else reply[2]
                        if task_id is not None and len(reply) == 4:  # ("ok", id, threads, value)
                            self._threads = max(self._threads, reply[2])
        if errors:
            kept = self._after_error(pending)
            rank, category, message, text, metrics, deliberate = min(errors, key=lambda e: e[0])  # stable
            if kept:
                note = ""
            elif pending:
                note = (f" (ranks {sorted(pending)} did not return within {self.error_grace_s:g} s, "
                        "stuck in a collective: pool torn down)")
            else:
                note = " (process group unhealthy afterwards: pool torn down)"
            raise PoolTaskError(category, f"rank {rank}: {message}{note}", rank, text, metrics, deliberate)
        if pending:
            self._dump_stacks(pending)
            tails = "\n".join(f"--- rank {r} log tail ---\n{self.log_tail(r)}" for r in sorted(pending))
            self._kill()
            raise PoolTaskError(
                "timeout",
                f"ranks {sorted(pending)} still busy in {what} after {timeout_s:g} s; pool torn down",
                min(pending), tails,
            )
        return [values[r] for r in range(self.world_size)]

    def _after_error(self, pending: set[int]) -> bool:
        """A rank raised: keep the pool only if every rank came back and the group still agrees."""
        if pending:
            self._kill()
            return False
        try:
            sums = self.run("harness.run.ranks:health_check", timeout_s=self.error_grace_s)
        except PoolTaskError:
            self._kill()
            return False
        expected = self.world_size * (self.world_size + 1) / 2
        if any(s != expected for s in sums):
            self._kill()
            return False
        return True

    def _dump_stacks(self, ranks: set[int]) -> None:
        """Hung ranks write every thread's stack to their logs (remote ones: their node does it)."""
        if self._remote is not None and any(r >= self.local_size for r in ranks):
            self._remote.end("timeout")  # the nodes dump their ranks' stacks and send the log tails
        request_stacks([self._procs[r] for r in sorted(ranks) if r < self.local_size])
        time.sleep(1.0)
        if self._remote is not None:
            self._remote.wait_tails({r for r in ranks if r >= self.local_size})


_POOLS: dict[tuple[int, str], RankPool] = {}
# What matrix cells import anyway: paid once at pool start rather than by the first cell.
PRELOAD = ("transformers", "peft", "harness.stacks.native.placement")


def get_pool(world_size: int, device_type: str = "cpu") -> RankPool:
    """This process's pool for (world size, device type); started on its first `run`.

    On CUDA a process holds at most one pool, hence one GPU lease: asking for another world
    size closes the other pool first, so no process holds GPUs while it waits for more. Likewise
    at most one pool spans several nodes, since each node serves one pool at a time.
    """
    try:
        rdzv = from_env()
        nodes, _ = placement(world_size, device_type, rdzv)
    except RendezvousError as exc:
        raise PoolTaskError("error", str(exc)) from None
    if nodes > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        raise PoolTaskError("error", f"world size {world_size} spans {nodes} nodes: run multi-host "
                                     "cells in one pytest process (no -n), which hosts the rendezvous")
    key = (world_size, device_type)
    if key not in _POOLS:
        for other in [k for k, p in _POOLS.items()
                      if (device_type == "cuda" and k[1] == "cuda") or (nodes > 1 and p.nodes > 1)]:
            _POOLS.pop(other).close()
        _POOLS[key] = RankPool(world_size, device_type, preload=PRELOAD, nodes=nodes, rendezvous=rdzv)
    return _POOLS[key]


@atexit.register
def close_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].close()
    shutdown_nodes()  # the pool-worker processes of the other nodes exit (none if none spanned hosts)
