"""The other nodes of a rank pool that spans hosts: `compat-harness pool-worker`.

Node 0 (the pytest process, harness/run/pool.py) hosts a TCPStore at the rendezvous endpoint.
Every other node runs one long-lived `compat-harness pool-worker`, which joins that store and
waits. The store is the only channel between hosts; the ranks themselves are plain pool ranks
(harness/run/ranks.py: `_worker_main`) that talk to their own node's process over a pipe, exactly
as on one host. So a node is a relay, and the pool's failure rules need nothing new:

    compat-harness/gen                  a counter: the newest generation (one per pool start)
    compat-harness/g<G>/spec            JSON: world size, nodes, device type, preload
    compat-harness/g<G>/pg/...          the process group's own rendezvous keys
    compat-harness/g<G>/up/<rank>       a remote rank is ready (or died starting)
    compat-harness/g<G>/task/<n>        the n-th task of this generation: (task id, task, payload)
    compat-harness/g<G>/reply/<id>/<r>  rank r's reply: ok, error (with traceback) or dead
    compat-harness/g<G>/dead            a rank of some node died between tasks
    compat-harness/g<G>/end             close | kill | timeout: the nodes stop their ranks
    compat-harness/g<G>/tail/<rank>     after a timeout: the hung rank's log tail (stacks)
    compat-harness/shutdown             node 0 is done: the workers exit

A generation's ranks are started when its spec appears and stopped at its `end`; a node whose
rank is not needed by a generation (fewer nodes than the rendezvous has) sits it out. When node
0 goes away the store does too, and the workers exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path

from harness.run.devices import lease_gpus
from harness.run.ranks import (
    PoolTaskError,
    RankSpec,
    exit_text,
    read_tail,
    receive,
    request_stacks,
    spawn_rank,
    stop_ranks,
)
from harness.run.rendezvous import RDZV_ENV, Rendezvous, RendezvousError, parse

POLL_S = 0.05  # how often a node and node 0 look for new keys; a task costs seconds anyway
ROOT = "compat-harness"
_HOSTED: dict[str, object] = {}  # endpoint -> the TCPStore this process hosts there


def key(*parts) -> str:
    return "/".join([ROOT, *map(str, parts)])


# --- node 0 -------------------------------------------------------------------------------------

def host_store(rdzv: Rendezvous):
    """The rendezvous store, hosted by this process at the endpoint (once per process)."""
    if rdzv.endpoint not in _HOSTED:
        import torch.distributed as dist

        try:
            _HOSTED[rdzv.endpoint] = dist.TCPStore(rdzv.master_addr, rdzv.master_port, is_master=True,
                                                   wait_for_workers=False, timeout=timedelta(seconds=300))
        except (RuntimeError, OSError) as exc:
            raise PoolTaskError("error", f"cannot host the rendezvous store at {rdzv.endpoint} "
                                         f"({RDZV_ENV}): {exc}") from None
    return _HOSTED[rdzv.endpoint]


def shutdown_nodes() -> None:
    """Tell every pool-worker of this process's rendezvous to exit."""
    for store in _HOSTED.values():
        with contextlib.suppress(RuntimeError, OSError):
            store.set(key("shutdown"), "1")


@dataclass
class RemoteRanks:
    """Node 0's view of the ranks on the other nodes for one pool generation."""

    store: object
    gen: int
    _posted: int = 0
    _tails: dict[int, str] = field(default_factory=dict)

    @classmethod
    def announce(cls, rdzv: Rendezvous, world_size: int, nodes: int, device_type: str,
                 preload: tuple[str, ...]) -> RemoteRanks:
        store = host_store(rdzv)
        gen = int(store.add(key("gen"), 1))
        spec = {"world_size": world_size, "nodes": nodes, "device_type": device_type,
                "preload": list(preload)}
        store.set(key(f"g{gen}", "spec"), json.dumps(spec))
        return cls(store, gen)

    def k(self, *parts) -> str:
        return key(f"g{self.gen}", *parts)

    @property
    def group_prefix(self) -> str:
        return self.k("pg") + "/"

    def post(self, task_id: int, task: str, payload: dict) -> None:
        self._posted += 1
        self.store.set(self.k("task", self._posted), pickle.dumps((task_id, task, payload)))

    def replies(self, task_id: int | None, ranks: set[int]) -> list[tuple[int, tuple]]:
        """(rank, reply) for each of `ranks` that answered `task_id` (None: came up)."""
        found = []
        for rank in sorted(ranks):
            name = self.k("up", rank) if task_id is None else self.k("reply", task_id, rank)
            if self.store.check([name]):
                found.append((rank, pickle.loads(self.store.get(name))))
                self.store.delete_key(name)
        return found

    def healthy(self) -> bool:
        return not self.store.check([self.k("dead")])

    def end(self, how: str) -> None:
        if not self.store.check([self.k("end")]):
            self.store.set(self.k("end"), how)

    def wait_tails(self, ranks: set[int], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        for rank in sorted(ranks):
            name = self.k("tail", rank)
            while not self.store.check([name]) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if self.store.check([name]):
                self._tails[rank] = self.store.get(name).decode(errors="replace")

    def tail(self, rank: int) -> str:
        return self._tails.get(rank, f"(rank {rank} runs on another node; its log stays there)")


# --- the other nodes ----------------------------------------------------------------------------

class NodeRanks:
    """This node's ranks for one generation: start them, relay tasks, stop them at its end."""

    def __init__(self, store, gen: int, spec: dict, rdzv: Rendezvous, log=print):
        self.store, self.gen, self.rdzv, self.log = store, gen, rdzv, log
        self.per_node = spec["world_size"] // spec["nodes"]
        self.ranks = [rdzv.node_rank * self.per_node + i for i in range(self.per_node)]
        self.spec = spec
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"compat-node{rdzv.node_rank}-g{gen}-"))
        self.procs: list = []
        self.conns: list = []

    def k(self, *parts) -> str:
        return key(f"g{self.gen}", *parts)

    def log_path(self, rank: int) -> Path:
        return self.log_dir / f"rank{rank}.log"

    def serve(self) -> None:
        lease = None
        visible = None
        if self.spec["device_type"] == "cuda":
            lease = lease_gpus(self.per_node)
            visible = lease.visible_devices
        rank_spec = RankSpec(self.spec["world_size"], self.per_node, self.spec["device_type"],
                             self.rdzv.master_addr, self.rdzv.master_port, self.k("pg") + "/",
                             visible, tuple(self.spec["preload"]), self.rdzv.node_rank)
        self.log(f"node {self.rdzv.node_rank}: generation {self.gen}: starting ranks {self.ranks} "
                 f"(logs in {self.log_dir})")
        try:
            for local, rank in enumerate(self.ranks):
                proc, conn = spawn_rank(rank, local, rank_spec, self.log_path(rank))
                self.procs.append(proc)
                self.conns.append(conn)
            how = self._relay()
            self.log(f"node {self.rdzv.node_rank}: generation {self.gen}: {how}")
        finally:
            self._kill()
            if lease is not None:
                lease.release()

    def _relay(self) -> str:
        busy: dict[int, int | None] = dict.fromkeys(range(len(self.ranks)))  # local -> task id (None: start)
        posted, broken = 0, False
        while True:
            if self.store.check([self.k("end")]):
                how = self.store.get(self.k("end")).decode()
                self._finish(how)
                return how
            if broken:
                time.sleep(POLL_S)
                continue
            if not busy and self.store.check([self.k("task", posted + 1)]):
                posted += 1
                message = pickle.loads(self.store.get(self.k("task", posted)))
                self.store.delete_key(self.k("task", posted))
                for conn in self.conns:
                    with contextlib.suppress(OSError):
                        conn.send(message)
                busy = dict.fromkeys(range(len(self.ranks)), message[0])
            watched = ({c: i for i, c in enumerate(self.conns)}
                       | {p.sentinel: i for i, p in enumerate(self.procs)})
            for ready in wait(list(watched), timeout=POLL_S):
                local = watched[ready]
                reply = receive(self.conns[local])
                if reply is None:
                    self._died(local, busy)
                    broken = True
                    break
                if local in busy and ((reply[0] == "ready") if busy[local] is None
                                         else reply[1] == busy[local]):
                    task_id = busy.pop(local)
                    rank = self.ranks[local]
                    name = self.k("up", rank) if task_id is None else self.k("reply", task_id, rank)
                    self.store.set(name, pickle.dumps(reply))

    def _died(self, local: int, busy: dict) -> None:
        """A rank died: node 0 learns it from the reply it waits for (or, when idle, from `dead`)."""
        rank, proc = self.ranks[local], self.procs[local]
        proc.join(timeout=1)
        text = exit_text(proc.exitcode)
        self.log(f"node {self.rdzv.node_rank}: rank {rank} died ({text})")
        if local in busy:
            task_id = busy[local]
            name = self.k("up", rank) if task_id is None else self.k("reply", task_id, rank)
            self.store.set(name, pickle.dumps(("dead", task_id, text, read_tail(self.log_path(rank)))))
        else:
            self.store.set(self.k("dead"), f"rank {rank} on node {self.rdzv.node_rank}: {text}")
        self._kill()

    def _finish(self, how: str) -> None:
        if how == "timeout":  # the same as on node 0: every thread's stack into the log first
            request_stacks(self.procs)
            time.sleep(1.0)
            for rank in self.ranks:
                self.store.set(self.k("tail", rank), read_tail(self.log_path(rank)))
        self._kill(polite_s=5 if how == "close" else 0)

    def _kill(self, polite_s: float = 0) -> None:
        stop_ranks(self.procs, self.conns, polite_s)
        self.procs, self.conns = [], []


def serve(rdzv: Rendezvous, connect_timeout_s: float = 600, log=print) -> int:
    """A node's whole life: join node 0's store, serve each generation that needs this node."""
    import torch.distributed as dist

    if rdzv.node_rank == 0:
        raise RendezvousError("node 0 runs pytest (it hosts the store); pool-worker is for node_rank >= 1")
    try:
        store = dist.TCPStore(rdzv.master_addr, rdzv.master_port, is_master=False,
                              timeout=timedelta(seconds=connect_timeout_s))
    except (RuntimeError, OSError) as exc:
        log(f"node {rdzv.node_rank}: no rendezvous store at {rdzv.endpoint}: {exc}")
        return 1
    log(f"node {rdzv.node_rank}: joined the rendezvous at {rdzv.endpoint} ({rdzv.nnodes} nodes)")
    seen = 0
    try:
        while not store.check([key("shutdown")]):
            gen = int(store.add(key("gen"), 0))
            if gen <= seen:
                time.sleep(POLL_S * 4)
                continue
            seen = gen  # generations before the newest have ended: node 0 moved on
            if store.check([key(f"g{gen}", "end")]):
                continue
            store.wait([key(f"g{gen}", "spec")])
            spec = json.loads(store.get(key(f"g{gen}", "spec")))
            if rdzv.node_rank < spec["nodes"]:
                NodeRanks(store, gen, spec, rdzv, log).serve()
    except (RuntimeError, OSError) as exc:  # DistStoreError: node 0 and its store are gone
        log(f"node {rdzv.node_rank}: the rendezvous store went away ({exc}); exiting")
        return 0
    log(f"node {rdzv.node_rank}: node 0 is done; exiting")
    return 0


# --- CLI (registered in harness/cli.py) ---------------------------------------------------------

def add_pool_worker(subparsers) -> None:
    p = subparsers.add_parser(
        "pool-worker", help="serve the ranks of this node for a rank pool that spans hosts",
        description=f"Run on every node but node 0 (e.g. by srun). The rendezvous comes from "
                    f"{RDZV_ENV} (nnodes=N,nproc=P,endpoint=HOST:PORT[,node_rank=R]); the options "
                    "below override its keys. The node rank defaults to SLURM_NODEID, NODE_RANK "
                    "or GROUP_RANK. Exits when node 0's pytest session ends.")
    p.add_argument("--rdzv", default=None, help=f"rendezvous spec (default: ${RDZV_ENV})")
    p.add_argument("--nnodes", type=int, default=None)
    p.add_argument("--nproc-per-node", type=int, default=None, help="ranks per node")
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of node 0")
    p.add_argument("--node-rank", type=int, default=None)
    p.add_argument("--connect-timeout", type=float, default=600,
                   help="seconds to wait for node 0's store (default %(default)s)")
    p.set_defaults(func=run_pool_worker)


def rendezvous_from_args(args, environ=None) -> Rendezvous:
    environ = os.environ if environ is None else environ
    spec = args.rdzv if args.rdzv is not None else environ.get(RDZV_ENV, "")
    fields = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    for name, value in (("nnodes", args.nnodes), ("nproc", args.nproc_per_node),
                        ("endpoint", args.rdzv_endpoint), ("node_rank", args.node_rank)):
        if value is not None:
            fields[name] = str(value)
    rdzv = parse(",".join(f"{k}={v}" for k, v in fields.items()), environ)
    if rdzv is None:
        raise RendezvousError(f"pool-worker needs a rendezvous: {RDZV_ENV} or --rdzv-endpoint")
    return rdzv


def run_pool_worker(args) -> int:
    import sys

    try:
        rdzv = rendezvous_from_args(args)
        return serve(rdzv, args.connect_timeout, log=lambda text: print(text, flush=True))
    except RendezvousError as exc:
        print(f"compat-harness pool-worker: {exc}", file=sys.stderr)
        return 2
