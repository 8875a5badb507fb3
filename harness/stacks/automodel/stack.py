"""The NeMo AutoModel stack as the seam sees it (harness/stacks/base.py), as its users run it.

`place` is one documented call: `NeMoAutoModelFor<auto class>.from_pretrained(path,
distributed_setup=DistributedSetup.build(strategy=FSDP2Config(...), parallelism_sizes=...),
peft_config=PeftConfig(...), force_hf=...)`. AutoModel loads its own class where its registry has
one (the cell's "default" implementation) or transformers' (`force_hf=True`, the `~force_hf`
cells), applies its own LoRA and its own parallelizer, and returns the model placed. A "default"
cell of a row AutoModel has no class of its own for loaded transformers' class, which its
`~force_hf` cell runs: it skips as `not-offered`, naming the class that loaded.

What AutoModel says of the row (`query_capabilities` of its config: supports_tp, supports_ep, ...)
goes into the record beside what ran, so the docs can set the declaration against the evidence.

Training is the harness's loop (harness/stacks/harness_loop.py) on the harness's batches, with the
loss AutoModel's recipes compute (`loss_for` gives `recipe_loss`: its MaskedCrossEntropy on the
logits, labels shifted as its datasets shift them), since several of its own classes compute none.
Saving is
AutoModel's Checkpointer: the adapter as its PEFT export (what users ship), the full model as its
consolidated Hugging Face checkpoint. Loading back is plain transformers and peft on one device,
which is the round trip AutoModel's users report broken.

AutoModel is GPU only and needs a process group even on one device: on one GPU this stack starts
a one-rank group (gloo for CPU tensors, NCCL for CUDA) in its process, as AutoModel's recipes do,
and leaves it for the process's later cells. At world size 1 AutoModel shards nothing
(components/distributed/fsdp2.py: no FSDP2 below two ranks); the layout proof sees an unsharded
model, and the record says so.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from harness.ckpt.atomic import atomic_directory
from harness.ckpt.implementations import load_config, trust_remote_code
from harness.ckpt.loading import checked_load
from harness.ckpt.tiny import auto_model_class
from harness.failures import CellFailure
from harness.spec.matrix import FORCE_HF, Architecture
from harness.stacks import loop
from harness.stacks.automodel import settings
from harness.stacks.base import PlaceRequest
from harness.stacks.harness_loop import HarnessLoop
from harness.stacks.method_settings import sft_frozen
from harness.stacks.placed import DataParallel, Placed, Trainable
from harness.stacks.proof import layout_kind
from harness.stacks.reload import PlainReload
from harness.stacks.result import TrainResult

# The module prefix of AutoModel's own model classes (a class from anywhere else is transformers'
# or the hub's remote code, loaded through AutoModel's fallback).
OWN_CODE = "nemo_automodel."


@dataclass
class _Built:
    """What saving a model AutoModel built needs to know: its checkpoint and its PeftConfig."""

    checkpoint: Path
    peft_config: object = None


class AutoModelStack(HarnessLoop, PlainReload):
    """NeMo AutoModel: its model classes, its LoRA, its parallelizer and its Checkpointer."""

    name = "automodel"
    own_trainer = False
    # Its PatchedLinearLoRA (and its own classes) against peft's LoRA on transformers' class.
    exact_reload = False
    choice_defaults: Mapping[str, str] = {
        "automodel_mixed_precision": "tier_dtype",
        "optimizer_groups": "by_tensor_kind",
    }
    # A cell places at most two models (a round trip: the trained one, then plain libraries'); the
    # oldest are forgotten so that a worker running hundreds of cells does not keep them.
    KEPT_MODELS = 4

    def __init__(self) -> None:
        self._built: OrderedDict[int, _Built] = OrderedDict()

    # --- placing: AutoModel's from_pretrained ---------------------------------------------------

    def place(self, request: PlaceRequest) -> Placed:
        import nemo_automodel
        from nemo_automodel import query_capabilities
        from nemo_automodel.components._peft.lora import PeftConfig
        from nemo_automodel.components.distributed import DistributedSetup, FSDP2Config, ParallelismSizes
        from torch.distributed.fsdp import MixedPrecisionPolicy

        arch, layout = request.arch, request.layout
        release = version("nemo-automodel")
        auto = getattr(nemo_automodel, f"NeMo{arch.auto_class}", None)
        if auto is None:
            raise CellFailure("not-offered", f"NeMo AutoModel {release} has no NeMo{arch.auto_class} "
                                             f"(the auto class of {arch.name})")
        peft_kwargs = None
        if request.method.is_lora:
            try:
                peft_kwargs = settings.peft_config_kwargs(arch, request.method,
                                                          output_layer_name(arch, request.checkpoint))
            except settings.NotExpressible as exc:
                raise CellFailure("not-offered", str(exc)) from exc
        precision = settings.mixed_precision(self._choice(request.choices, "automodel_mixed_precision"),
                                             request.dtype)
        strategy = FSDP2Config() if precision is None else FSDP2Config(mp_policy=MixedPrecisionPolicy(
            **{key: getattr(torch, value) for key, value in precision.items()}))
        start_process_group(request)
        setup = DistributedSetup.build(strategy=strategy,
                                       parallelism_sizes=ParallelismSizes(**settings.parallelism_sizes(layout)),
                                       world_size=layout.world_size)
        peft_config = PeftConfig(**peft_kwargs) if peft_kwargs is not None else None
        force_hf = request.implementation == FORCE_HF
        torch.manual_seed(0)
        remote = trust_remote_code(arch)
        model = checked_load(lambda: auto.from_pretrained(str(request.checkpoint), distributed_setup=setup,
                                                          peft_config=peft_config, force_hf=force_hf,
                                                          dtype=getattr(torch, request.dtype),
                                                          trust_remote_code=remote),
                             arch.name, request.checkpoint, remote)
        code = model_code(model)
        if not force_hf and not code.startswith(OWN_CODE):
            raise CellFailure("not-offered", f"NeMo AutoModel {release} has no class of its own for "
                                             f"{arch.name}: from_pretrained loaded {code}, transformers' "
                                             "class, which the ~force_hf cell runs")
        if not request.method.is_lora:  # what text cannot reach stays frozen, as for every stack
            for name, param in model.named_parameters():
                if sft_frozen(name, arch):
                    param.requires_grad_(False)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        lora = sorted({n.split(".lora_")[0] for n in trainable if ".lora_" in n})
        if request.method.is_lora and not lora:
            raise CellFailure("peft-unsupported", f"AutoModel's PeftConfig({peft_kwargs}) adapted no module "
                                                  f"of {type(model).__name__}")
        dp_size = settings.data_parallel_size(layout)
        rank = request.ctx.rank if request.ctx is not None else 0
        notes = [f"nemo_automodel {release}"]
        if layout.world_size == 1:
            notes.append("FSDP2Config over one GPU: AutoModel applies no FSDP2 at world size 1")
        placed = Placed(
            model, Trainable(model, trainable, frozen, lora), layout_kind(layout),
            api=f"NeMo{arch.auto_class}.from_pretrained",
            call=settings.call_text(arch.auto_class, layout, peft_kwargs, force_hf, precision),
            # every data-parallel rank is a rank of the world (dp is world / tp): the world's group
            dp=DataParallel(rank=rank % dp_size, size=dp_size),
            moe=arch.moe, notes=notes,
            facts={"automodel": {"release": release, "model_class": code, "force_hf": force_hf,
                                 "own_class": code.startswith(OWN_CODE),
                                 "mixed_precision": "automodel default" if precision is None else precision,
                                 "peft_config": peft_kwargs,
                                 **declared_capabilities(query_capabilities, model.config)}},
        )
        self._built[id(model)] = _Built(Path(request.checkpoint), peft_config)
        while len(self._built) > self.KEPT_MODELS:
            self._built.popitem(last=False)
        return placed

    # --- training: the harness's loop -----------------------------------------------------------

    def loss_for(self, per_sequence: bool):
        """A classifier's own loss (one label per sequence), else AutoModel's recipe loss."""
        return loop.model_loss if per_sequence else recipe_loss

    # --- saving: AutoModel's Checkpointer; loading: plain transformers and peft ------------------

    def _checkpointer_save(self, model, target: Path, *, peft: bool) -> None:
        """AutoModel's Checkpointer writes into `target` (through a staging directory that appears
        whole or not at all); what it wrote under model/ (the adapter) or model/consolidated/ (the
        full Hugging Face checkpoint) is lifted to the top, where plain from_pretrained reads it."""
        from nemo_automodel.components.checkpoint.config import CheckpointingConfig

        built = self._built[id(model)]
        with atomic_directory(target) as staging:
            config = CheckpointingConfig(checkpoint_dir=str(staging), model_repo_id=str(built.checkpoint),
                                         model_save_format="safetensors", is_peft=peft,
                                         save_consolidated=not peft)
            checkpointer = config.build(dp_rank=0, tp_rank=0, pp_rank=0)
            try:
                if peft:
                    checkpointer.save_model(model, str(staging), peft_config=built.peft_config)
                else:
                    checkpointer.save_model(model, str(staging), is_final_checkpoint=True)
            finally:
                checkpointer.close()
            written = staging / "model" / ("" if peft else "consolidated")
            lift(written, staging)

    def save_adapter(self, model, target: Path) -> None:
        if id(model) in self._built:
            self._checkpointer_save(model, target, peft=True)
            return
        with atomic_directory(target) as staging:  # a plain peft model (reloaded by plain peft)
            model.save_pretrained(staging)

    def save_pretrained(self, model, target: Path, max_shard_size: str) -> None:
        if id(model) in self._built:
            self._checkpointer_save(model, target, peft=False)
            return
        with atomic_directory(target) as staging:  # a plain transformers model (e.g. merged by peft)
            model.save_pretrained(staging, max_shard_size=max_shard_size)

    # --- what the stack does not declare (matrix stacks.automodel: checks, tiers) ----------------

    def _undeclared(self, what: str):
        raise CellFailure("layout-unsupported", f"the automodel stack declares no {what} "
                                                "(matrix stacks.automodel)")

    def save_sharded(self, model, target: Path) -> None:
        self._undeclared("dcp_roundtrip")

    def load_sharded(self, model, source: Path, collective: bool = True) -> None:
        self._undeclared("dcp_roundtrip")

    def set_full_state(self, model, state: dict) -> None:
        self._undeclared("dcp_roundtrip")

    def align_for_parity(self, placed: Placed, request: PlaceRequest) -> dict:
        self._undeclared("parity")

    def measure_real_shape(self, cr) -> tuple[dict, TrainResult]:
        self._undeclared("real-shape tier")


def recipe_loss(model, batch: dict) -> torch.Tensor:
    """The loss as AutoModel's LLM recipe computes it: labels out of the batch, the model on the
    rest, `calculate_loss(MaskedCrossEntropy(), ...)` over the label tokens of next-token labels."""
    from nemo_automodel.components.loss.masked_ce import MaskedCrossEntropy
    from nemo_automodel.components.loss.utils import calculate_loss

    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labels = settings.next_token_labels(batch["labels"])
    logits = model(**inputs).logits
    return calculate_loss(MaskedCrossEntropy(), logits=logits, labels=labels,
                          num_label_tokens=int((labels != -100).sum()))


def start_process_group(request: PlaceRequest) -> None:
    """AutoModel builds its meshes on the default process group: on one device (no pool rank),
    start a one-rank group if there is none (gloo for CPU tensors, NCCL for CUDA ones: with only
    gloo AutoModel would build a CPU mesh)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if request.layout.world_size != 1:
        raise CellFailure("harness-error", f"layout {request.layout.name} reached the automodel stack "
                                           "outside a pool rank")
    dist.init_process_group("cpu:gloo,cuda:nccl", store=dist.HashStore(), rank=0, world_size=1)


def output_layer_name(arch: Architecture, checkpoint: Path) -> str | None:
    """The full name of the output layer of transformers' class for the checkpoint (built on the
    meta device: no weights), which peft's all-linear leaves out; None where it has none."""
    with torch.device("meta"):
        model = auto_model_class(arch).from_config(load_config(arch, checkpoint),
                                                   trust_remote_code=trust_remote_code(arch))
    head = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is head), None)


def model_code(model) -> str:
    """Where the model's forward is defined: `module.Class` (AutoModel's own, transformers', remote code)."""
    forward = type(model).forward
    return f"{forward.__module__}.{forward.__qualname__.rpartition('.')[0]}"


def declared_capabilities(query, config) -> dict:
    """AutoModel's declaration for the row (`query_capabilities` of its config), or why it has none."""
    try:
        return {"declared": dataclasses.asdict(query(config))}
    except Exception as exc:  # noqa: BLE001 - an undeclared row is a fact for the record, not a failure
        return {"declared": None, "declared_error": f"{type(exc).__name__}: {exc}"}


def lift(written: Path, root: Path) -> None:
    """Move what AutoModel wrote under `written` to `root`, dropping the rest of its layout."""
    if not written.is_dir():
        raise CellFailure("check-failed", f"AutoModel's Checkpointer wrote no {written.relative_to(root)} "
                                          f"(found: {sorted(p.name for p in root.iterdir())})")
    moved = root.parent / f"{root.name}.lift"
    shutil.move(str(written), moved)
    for entry in list(root.iterdir()):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in moved.iterdir():
        shutil.move(str(entry), root / entry.name)
    moved.rmdir()
