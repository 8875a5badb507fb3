"""The Stack seam: what a check may ask of the software under test, and nothing more.

A stack is what users run to fine-tune a model: `native` is plain torch + transformers + peft
(harness/stacks/native), and the next stacks (TRL's SFTTrainer, NeMo AutoModel) plug in here by
implementing the same operations. A check never imports a stack's modules: it talks to
`cr.stack` (harness/cellrun.py) through this interface, so the same `train`, `parity` and round
trip checks judge every stack alike.

The operations:
- place a model for a cell's (row, method, layout, tier): `place(PlaceRequest) -> Placed`;
- train it on global batches: `steps(placed, Schedule)` yields after each backward (so a check
  can compare gradients in lockstep) and returns the TrainResult; `fit` runs it to the end;
  `eval_loss` is the loss of a global batch without training;
- save and load the stack's own checkpoint or adapter: sharded (every rank writes its shards),
  pretrained (one directory `from_pretrained` reads) and adapter;
- build a model at a real checkpoint's size with random weights and measure its training
  (memory, tokens/s, MFU): the real-shape tier;
- describe the choices its script makes where a user's might differ: `choice_defaults` names the
  matrix `choices` it reads and the value it takes where the matrix declares none; and
  make the two sides of a parity comparison start alike as those choices say.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.spec.matrix import Api, Architecture, Layout, Method
from harness.stacks.placed import Placed
from harness.stacks.result import TrainResult


@dataclass(frozen=True)
class PlaceRequest:
    """What a cell asks a stack to build on this rank."""

    arch: Architecture
    method: Method
    layout: Layout
    # The documented call that applies the layout (None on one device).
    api: Api | None
    checkpoint: Path
    dtype: str
    device: str
    # On a pool rank: the pool's RankContext (device, process group, meshes).
    ctx: object = None
    # The MoE experts kernel asked of transformers (None: its default).
    experts: str | None = None
    # The matrix's script choices (`choices`): name -> declared value.
    choices: Mapping[str, str] = field(default_factory=dict)
    # A stack whose trainer owns its data (TRL) builds it from the cell's schedule at placement.
    schedule: Schedule | None = None
    # Where the stack may write (a trainer's output directory); None: a temporary directory.
    scratch: Path | None = None
    # Parity under a stack that runs its own loop: keep every step's whole gradients.
    keep_grads: bool = False
    # The cell's implementation axis ("" the row's own or the stack's choice; "force_hf": automodel's
    # switch to transformers' class).
    implementation: str = ""


@dataclass(frozen=True)
class Schedule:
    """How to train: the global batches (taken in turn), the steps, the learning rate."""

    batches: list[dict]
    steps: int
    lr: float
    # A classifier's loss averages over sequences, a causal LM's over label tokens.
    per_sequence: bool = False
    # The matrix's script choices (`choices`): e.g. the optimizer's parameter groups.
    choices: Mapping[str, str] = field(default_factory=dict)


class Stack(Protocol):
    """The operations a check may call (see the module docstring)."""

    name: str
    # The matrix choices (`choices`) this stack reads, with the value it uses when undeclared.
    choice_defaults: Mapping[str, str]
    # A stack that runs its own trainer (TRL): it applies a layout through its own options, not
    # the matrix's `apis`, and builds its trainer around the cell's schedule at placement.
    own_trainer: bool
    # Whether what the stack trains runs the same code as plain transformers + peft loading back
    # what it saved, so that a round trip's logits must be bit-equal. AutoModel trains its own LoRA
    # modules (and its own classes): its round trips are judged within the dtype's tolerance.
    exact_reload: bool

    def place(self, request: PlaceRequest) -> Placed: ...

    def steps(self, placed: Placed, schedule: Schedule) -> Generator[int, None, TrainResult]: ...

    def fit(self, placed: Placed, schedule: Schedule) -> TrainResult: ...

    def eval_loss(self, placed: Placed, batch: dict, per_sequence: bool = False) -> float: ...

    def save_sharded(self, model, target: Path) -> None: ...

    def load_sharded(self, model, source: Path, collective: bool = True) -> None: ...

    def set_full_state(self, model, state: dict) -> None: ...

    def save_pretrained(self, model, target: Path, max_shard_size: str) -> None: ...

    def load_pretrained(self, arch: Architecture, source: Path, device: str): ...

    def save_adapter(self, model, target: Path) -> None: ...

    def load_base(self, request: PlaceRequest): ...

    def load_adapter(self, request: PlaceRequest, source: Path): ...

    def align_for_parity(self, placed: Placed, request: PlaceRequest) -> dict: ...

    def measure_real_shape(self, cr) -> tuple[dict, TrainResult]: ...

