"""The native stack's checkpoints: torch DCP for shards, `save_pretrained` for one directory,
and peft's own adapter format, each written atomically and verified before it is read
(harness/ckpt/atomic.py). Reading a directory or an adapter back is plain transformers and peft,
the same for every stack (harness/ckpt/models.py: reload_pretrained, load_adapter).
"""

from __future__ import annotations

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from harness.ckpt.atomic import atomic_directory, collective_atomic_directory, verify


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def save_dcp(model, target) -> None:
    """Every rank writes its shards (a collective when a process group is up); then one rename."""
    with collective_atomic_directory(target) as staging:
        dcp.save(get_model_state_dict(model), checkpoint_id=str(staging))


def load_dcp(model, source, collective: bool = True) -> None:
    """Load a (possibly sharded) DCP checkpoint into `model`, resharding to its layout.

    collective=False loads on this rank alone, e.g. rank 0 of a pool reading what all ranks
    saved into an unsharded model while the others are done.
    """
    verify(source)
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=str(source), no_dist=not (collective and _distributed()))
    set_model_state_dict(model, state)


def set_full_state(model, state: dict) -> None:
    """Give a (possibly sharded) model the gathered `state`: each rank keeps its own shards.

    A copy of the dict goes in: torch replaces its entries with the DTensor shards it makes.
    """
    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def export_hf(model, target, max_shard_size: str) -> None:
    """One unsharded model as `save_pretrained` writes it (sharded files with an index when large)."""
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)


def save_adapter(peft_model, target) -> None:
    """peft's `save_pretrained` of the adapter alone, into a directory that appears whole or not at all."""
    with atomic_directory(target) as staging:
        peft_model.save_pretrained(staging)
