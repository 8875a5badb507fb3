"""Where the ranks of a cell live when its world size is larger than one host.

A rendezvous is torchrun's static one: `nnodes` hosts, `nproc` ranks per host, node 0 at
`endpoint` (MASTER_ADDR:MASTER_PORT) and this host's `node_rank`. It is one spec string, so
that `srun`, a workflow and a shell all pass it the same way:

    COMPAT_HARNESS_RDZV="nnodes=2,nproc=8,endpoint=node0:29500,node_rank=0,id=job42"

Node 0 runs pytest: its rank pool hosts the TCPStore at `endpoint` and the first `nproc`
ranks. Every other node runs `compat-harness pool-worker` (harness/run/poolnode.py), which joins
that store and starts its own ranks when the pool asks for them. The node rank may instead come
from SLURM_NODEID, NODE_RANK or GROUP_RANK, so one `srun` line serves every node.

Unset or empty means one host: every pool is local, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.run.devices import cuda_device_count

RDZV_ENV = "COMPAT_HARNESS_RDZV"
KEYS = ("nnodes", "nproc", "endpoint", "node_rank", "id", "backend")
NODE_RANK_ENVS = ("SLURM_NODEID", "NODE_RANK", "GROUP_RANK")
DEFAULT_PORT = 29500


class RendezvousError(ValueError):
    """A rendezvous spec that cannot work; the message names the key."""


@dataclass(frozen=True)
class Rendezvous:
    nnodes: int
    nproc: int | None  # ranks per node; None: this host's GPU count (CUDA) — required on CPU
    master_addr: str
    master_port: int
    node_rank: int = 0
    id: str = "compat-harness"
    backend: str = "c10d"

    @property
    def endpoint(self) -> str:
        return f"{self.master_addr}:{self.master_port}"

    def to_spec(self) -> str:
        nproc = "" if self.nproc is None else f",nproc={self.nproc}"
        return (f"nnodes={self.nnodes}{nproc},endpoint={self.endpoint},node_rank={self.node_rank},"
                f"id={self.id}")


def parse(spec: str, environ: dict | None = None) -> Rendezvous | None:
    """The rendezvous of a spec string; None for '' (one host)."""
    environ = os.environ if environ is None else environ
    fields = dict(part.strip().split("=", 1) for part in spec.split(",") if part.strip())
    unknown = set(fields) - set(KEYS)
    if unknown:
        raise RendezvousError(f"{RDZV_ENV}: unknown keys {sorted(unknown)}; allowed: {', '.join(KEYS)}")
    if not fields:
        return None
    if "endpoint" not in fields:
        raise RendezvousError(f"{RDZV_ENV}: a multi-host rendezvous needs endpoint=HOST:PORT")
    host, _, port = fields["endpoint"].rpartition(":")
    if not host:
        host, port = fields["endpoint"], str(DEFAULT_PORT)
    node_rank = fields.get("node_rank")
    if node_rank is None:
        node_rank = next((environ[k] for k in NODE_RANK_ENVS if environ.get(k)), "0")
    try:
        rdzv = Rendezvous(nnodes=int(fields.get("nnodes", "1")),
                          nproc=int(fields["nproc"]) if fields.get("nproc", "gpu") != "gpu" else None,
                          master_addr=host, master_port=int(port), node_rank=int(node_rank),
                          id=fields.get("id", "compat-harness"), backend=fields.get("backend", "c10d"))
    except ValueError as exc:
        raise RendezvousError(f"{RDZV_ENV}: {exc} in {spec!r}") from None
    if rdzv.nnodes < 1 or not 0 <= rdzv.node_rank < rdzv.nnodes:
        raise RendezvousError(f"{RDZV_ENV}: node_rank {rdzv.node_rank} is not in 0..{rdzv.nnodes - 1}")
    if rdzv.nproc is not None and rdzv.nproc < 1:
        raise RendezvousError(f"{RDZV_ENV}: nproc must be at least 1, got {rdzv.nproc}")
    return rdzv


def from_env() -> Rendezvous | None:
    return parse(os.environ.get(RDZV_ENV, ""))


def ranks_per_node(rdzv: Rendezvous, device_type: str) -> int | None:
    """How many ranks one host gives a pool: nproc, else the GPUs here (None: no limit on CPU)."""
    if rdzv.nproc is not None:
        return rdzv.nproc
    if device_type == "cuda":
        return cuda_device_count()
    return None


def placement(world_size: int, device_type: str, rdzv: Rendezvous | None = None) -> tuple[int, int]:
    """(nodes, ranks per node) for a pool of `world_size`: one node whenever the ranks fit on it.

    More nodes than one split the ranks evenly; a world size that does not split evenly over
    the fewest nodes that hold it, or that needs more nodes than the rendezvous has, is an error.
    """
    rdzv = from_env() if rdzv is None else rdzv
    per_host = ranks_per_node(rdzv, device_type) if rdzv else None
    if rdzv is None or rdzv.nnodes == 1 or per_host is None or world_size <= per_host:
        return 1, world_size
    nodes = -(-world_size // per_host)
    if nodes > rdzv.nnodes:
        raise RendezvousError(f"world size {world_size} needs {nodes} nodes of {per_host} ranks; "
                              f"the rendezvous has {rdzv.nnodes}")
    if world_size % nodes:
        raise RendezvousError(f"world size {world_size} does not split evenly over {nodes} nodes")
    return nodes, world_size // nodes


def capacity(device_type: str, rdzv: Rendezvous | None = None) -> int | None:
    """Most ranks one pool can have over every node (None: unknown or unlimited)."""
    rdzv = from_env() if rdzv is None else rdzv
    if rdzv is None:
        return None
    per_host = ranks_per_node(rdzv, device_type)
    return None if per_host is None else per_host * rdzv.nnodes


def torchrun_args(spec: str | None = None) -> list[str]:
    """The same rendezvous as torchrun arguments ('' or unset: --standalone), for scripts that
    launch a training job with torchrun on the hosts the harness ran on."""
    rdzv = from_env() if spec is None else parse(spec)
    if rdzv is None:
        return ["--standalone"]
    return [f"--nnodes={rdzv.nnodes}", f"--nproc-per-node={rdzv.nproc or 'gpu'}",
            f"--rdzv-backend={rdzv.backend}", f"--rdzv-endpoint={rdzv.endpoint}",
            f"--rdzv-id={rdzv.id}"]
