"""A persistent pool of N ranks: imports and process-group init are paid once, not once per cell.

    pool = get_pool(world_size=2, device_type="cpu")
    per_rank = pool.run("harness.stacks.native.placement:train_task", payload, timeout_s=120)

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
import contextlib
import importlib
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from harness.failures import CellFailure, classify

LOG_TAIL_LINES = 40
# A rank whose thread count passes this is restarted before the next task. transformers builds a
# new device mesh (new process groups, each with its own gloo threads) at every distributed load,
# and a persistent rank loads hundreds of models: without a limit the threads pile up until the
# host refuses new ones ("can't start new thread"), which is no verdict on any cell.
RECYCLE_THREADS = int(os.environ.get("COMPAT_HARNESS_RANK_THREADS", "400"))


class PoolTaskError(CellFailure):
    """A pool task failed: category, message, which rank, and that rank's traceback."""

    def __init__(self, category: str, message: str, rank: int | None = None, rank_traceback: str = "",
                 metrics: dict | None = None):
        super().__init__(category, message, metrics)
        self.rank = rank
        self.rank_traceback = rank_traceback

    def __str__(self) -> str:
        return f"{self.message}\n{self.rank_traceback}" if self.rank_traceback else self.message


@dataclass
class RankContext:
    """What a task function gets besides its payload."""

    rank: int
    world_size: int
    device: object  # torch.device
    backend: str
    local_rank: int = 0  # the rank on this host (the GPU index on CUDA)
    node_rank: int = 0
    _meshes: dict = field(default_factory=dict, repr=False)

    @property
    def device_type(self) -> str:
        return self.device.type

    def mesh(self, dims: dict[str, int]):
        """A DeviceMesh with these named dims, built once per shape (its groups are reused)."""
        key = tuple(dims.items())
        if key not in self._meshes:
            from torch.distributed.device_mesh import init_device_mesh

            self._meshes[key] = init_device_mesh(
                self.device_type, tuple(dims.values()), mesh_dim_names=tuple(dims)
            )
        return self._meshes[key]


# --- the worker side ---------------------------------------------------------------------------

def resolve_task(task: str):
    module, _, name = task.partition(":")
    if not module or not name:
        raise ValueError(f"task must be 'module:function', got {task!r}")
    return getattr(importlib.import_module(module), name)


def _redirect_output(log_path: str):
    import faulthandler

    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    faulthandler.enable(file=log, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)
    return log


@dataclass(frozen=True)
class RankSpec:
    """What a spawned rank needs to join its pool's process group."""

    world_size: int
    local_world_size: int
    device_type: str
    master_addr: str
    master_port: int
    store_prefix: str = ""  # non-empty: the group's keys live under it in a shared store
    visible_devices: str | None = None
    preload: tuple[str, ...] = ()
    node_rank: int = 0


def spawn_rank(rank: int, local_rank: int, spec: RankSpec, log_path: Path):
    """Start one rank process; (process, the parent's end of its pipe)."""
    context = mp.get_context("spawn")
    parent_end, child_end = context.Pipe()
    proc = context.Process(target=_worker_main, name=f"compat-pool-rank{rank}", daemon=True,
                           args=(rank, local_rank, spec, child_end, str(log_path)))
    proc.start()
    child_end.close()
    return proc, parent_end


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _worker_main(rank: int, local_rank: int, spec: RankSpec, conn, log_path: str) -> None:
    """Runs in the spawned process: init torch.distributed once, then serve tasks until told to stop."""
    _redirect_output(log_path)
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(spec.world_size),
        "LOCAL_WORLD_SIZE": str(spec.local_world_size), "GROUP_RANK": str(spec.node_rank),
        "MASTER_ADDR": spec.master_addr, "MASTER_PORT": str(spec.master_port), "OMP_NUM_THREADS": "1",
    })
    if spec.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.visible_devices
    if spec.device_type == "cpu":
        # CPU ranks see no GPU: transformers' own distributed loading binds each rank to the
        # host's accelerator (cuda:LOCAL_RANK) even under gloo, which on a 1-GPU host fails
        # rank 1 with "invalid device ordinal", and would put a CPU cell's weights on a GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if spec.device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    store = dist.TCPStore(spec.master_addr, spec.master_port, is_master=False)
    if spec.store_prefix:
        store = dist.PrefixStore(spec.store_prefix, store)
    extra = {"device_id": device} if spec.device_type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=spec.world_size, **extra)
    ctx = RankContext(rank=rank, world_size=spec.world_size, device=device, backend=backend,
                      local_rank=local_rank, node_rank=spec.node_rank)
    for module in spec.preload:
        importlib.import_module(module)
    conn.send(("ready", rank, time.perf_counter() - start))
    while True:
        message = conn.recv()
        if message is None:
            break
        task_id, task, payload = message
        print(f"--- task {task_id}: {task}", flush=True)
        try:
            value = resolve_task(task)(payload, ctx)
            conn.send(("ok", task_id, thread_count(), value))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            category, message = classify(exc)  # a CellFailure keeps its own; else where it was raised
            text = "".join(traceback.format_exception(exc))
            print(text, flush=True)
            # a failing check's measurements (CellFailure.metrics) still belong in the record
            conn.send(("error", task_id, category, message, text, getattr(exc, "metrics", None) or {}))
    dist.destroy_process_group()


def thread_count() -> int:
    """This process's threads, native ones included (gloo's live outside Python's threading)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc (macOS): nothing to count, nothing to recycle
        return 0


def _health_check(payload: dict, ctx: RankContext) -> float:
    import torch
    import torch.distributed as dist

    value = torch.ones(1, device=ctx.device) * (ctx.rank + 1)
    dist.all_reduce(value)
    return float(value)


# --- the parent side ---------------------------------------------------------------------------

def exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# Node 0's pool and every other node's relay (harness/run/poolnode.py) hold their ranks the same way:
# a list of processes and the parent's ends of their pipes. These are the steps both take.

def receive(conn):
    """A rank's next message, or None when it died (EOF on its pipe)."""
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def request_stacks(procs) -> None:
    """SIGUSR1 to each live rank: faulthandler writes every thread's stack into its log."""
    for proc in procs:
        if proc.pid and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)


def stop_ranks(procs, conns, polite_s: float = 0) -> None:
    """Ask idle ranks to exit (for up to `polite_s`), kill whatever is left, close the pipes."""
    if polite_s > 0:
        for conn in conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        deadline = time.monotonic() + polite_s
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 0))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    for proc in procs:
        proc.join(timeout=10)
    for conn in conns:
        conn.close()


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
            from harness.run.devices import lease_gpus

            self._lease = lease_gpus(self.local_size)
            visible = self._lease.visible_devices
        if self.nodes == 1:
            store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True,
                                  wait_for_workers=False)
            self._store = store  # the workers' rendezvous lives as long as the pool
            addr, port, prefix = "127.0.0.1", store.port, ""
        else:
            from harness.run.poolnode import RemoteRanks

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
        from harness.run.poolnode import POLL_S

        deadline = time.monotonic() + timeout_s
        values: dict[int, object] = {}
        errors: list[tuple[int, str, str, str]] = []  # (rank, category, message, traceback)
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
                        errors.append((rank, *reply[2:5], reply[5] if len(reply) > 5 else {}))
                        deadline = min(deadline, time.monotonic() + self.error_grace_s)
                    else:
                        values[rank] = reply[-1] if task_id is not None else reply[2]
                        if task_id is not None and len(reply) == 4:  # ("ok", id, threads, value)
                            self._threads = max(self._threads, reply[2])
        if errors:
            kept = self._after_error(pending)
            rank, category, message, text, metrics = min(errors, key=lambda e: e[0])  # lowest rank: stable
            if kept:
                note = ""
            elif pending:
                note = (f" (ranks {sorted(pending)} did not return within {self.error_grace_s:g} s, "
                        "stuck in a collective: pool torn down)")
            else:
                note = " (process group unhealthy afterwards: pool torn down)"
            raise PoolTaskError(category, f"rank {rank}: {message}{note}", rank, text, metrics)
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
            sums = self.run("harness.run.pool:_health_check", timeout_s=self.error_grace_s)
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
    from harness.run.rendezvous import RendezvousError, from_env, placement

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
    poolnode = sys.modules.get("harness.run.poolnode")  # imported only where a pool spanned hosts
    if poolnode is not None:
        poolnode.shutdown_nodes()  # the pool-worker processes of the other nodes exit
