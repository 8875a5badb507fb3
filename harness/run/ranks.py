"""One rank of a pool, as a process: how it is spawned, what it runs, how it is read and stopped.

Node 0's pool (harness/run/pool.py) and every other node's relay (harness/run/poolnode.py) hold
their ranks the same way, so both import these primitives from here and neither imports the
other's internals. A rank loops: receive (task, payload), call `fn(payload, ctx)` with its
RankContext, send the value back; a task is named "module:function" so that the spawned process
imports it itself.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from harness.failures import CellFailure, classify

LOG_TAIL_LINES = 40

class PoolTaskError(CellFailure):
    """A pool task failed: category, message, which rank, and that rank's traceback."""

    def __init__(self, category: str, message: str, rank: int | None = None, rank_traceback: str = "",
                 metrics: dict | None = None, deliberate: bool = False):
        super().__init__(category, message, metrics)
        self.rank = rank
        self.rank_traceback = rank_traceback
        # The rank raised a CellFailure: a verdict the check decided, whose message says it all.
        self.deliberate = deliberate

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


def start_method(device_type: str) -> str:
    """How a rank process starts. CPU ranks fork from a forkserver that imported torch, transformers
    and peft once (`forkserver_preload`): a fresh interpreter per rank paid those imports again for
    every rank of every pool, 10-30 s a rank on a 2-core host, which made pool starts the largest
    cost of the CPU layout slices. CUDA ranks stay spawned (nothing CUDA-initialised is ever
    shared). COMPAT_HARNESS_RANK_START=spawn (or fork, forkserver) chooses another."""
    return os.environ.get("COMPAT_HARNESS_RANK_START") or ("forkserver" if device_type == "cpu" else "spawn")


def _context(spec: RankSpec):
    method = start_method(spec.device_type)
    context = mp.get_context(method)
    if method == "forkserver":
        # read when the server starts (the first CPU rank of this process); later calls are no-ops
        context.set_forkserver_preload(["torch", "torch.distributed", *spec.preload])
    return context


def spawn_rank(rank: int, local_rank: int, spec: RankSpec, log_path: Path):
    """Start one rank process; (process, the parent's end of its pipe)."""
    context = _context(spec)
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
        # Preloading only saves time: a library that cannot be imported (peft 0.17 under transformers
        # 5.25) fails the cells that use it, with its own ImportError, not the rank's start.
        with contextlib.suppress(Exception):
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
            conn.send(("error", task_id, category, message, text, getattr(exc, "metrics", None) or {},
                       isinstance(exc, CellFailure)))
    dist.destroy_process_group()


def thread_count() -> int:
    """This process's threads, native ones included (gloo's live outside Python's threading)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc (macOS): nothing to count, nothing to recycle
        return 0


def health_check(payload: dict, ctx: RankContext) -> float:
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
