"""What a cell asks of NeMo AutoModel, as AutoModel's own configuration spells it.

Plain functions of the matrix entries, with no import of AutoModel (so they are tested on any
machine): the stack (stack.py) hands their values to AutoModel's documented classes.

- LoRA: the method's settings (harness/stacks/method_settings.py, peft's names) become
  AutoModel's `PeftConfig` fields. AutoModel matches a module by its full name or a `*` wildcard
  (components/_peft/module_matcher.py): peft's bare `q_proj` is `*.q_proj` there. peft's
  `all-linear` is every linear layer but the output layer; AutoModel's `match_all_linear`
  includes the output layer (its docs warn of it), so `all-linear` is AutoModel's "every linear
  except" form, `exclude_modules`, naming the output layer (and a row's `lora_exclude`). A regular
  expression has no AutoModel spelling: `NotExpressible`.
- Layouts: the mesh's tp and ep sizes are `ParallelismSizes`; AutoModel derives the data-parallel
  size (world / tp), and EP shards experts inside it.
- Loss: AutoModel's recipes take `labels` out of the batch, run the model on the rest and apply
  their own loss (MaskedCrossEntropy, summed and divided by the label tokens) to the logits
  against labels their datasets shift by one token ahead of time; several of AutoModel's own
  classes (its MoE models) compute no loss themselves. The harness's batches follow transformers'
  convention (labels aligned with input_ids, the model shifts): `next_token_labels` is the shift.
- Precision: the matrix choice `automodel_mixed_precision` says whether FSDP2Config gets a
  MixedPrecisionPolicy of the tier's dtype, or AutoModel's default (bf16 compute).
"""

from __future__ import annotations

import torch

from harness.spec.matrix import Architecture, Layout, Method
from harness.stacks.method_settings import lora_settings


class NotExpressible(ValueError):
    """The matrix asks for something AutoModel's configuration cannot say."""


def wildcard(name: str) -> str:
    """peft's module name (matched as a suffix) as AutoModel's full-name wildcard."""
    return f"*.{name}"


def peft_config_kwargs(arch: Architecture, method: Method, output_layer: str | None = None) -> dict:
    """AutoModel's `PeftConfig(**kwargs)` for the row's LoRA (dim = peft's r, alpha = lora_alpha).

    `output_layer` is the full name of the model's output layer (transformers' class says it),
    which peft's `all-linear` leaves out."""
    settings = lora_settings(arch, method)
    kwargs = {"dim": settings["r"], "alpha": settings["lora_alpha"], "dropout": settings["lora_dropout"]}
    targets, excludes = settings["target_modules"], settings["exclude_modules"] or []
    if isinstance(targets, str) and targets == "all-linear":
        leave_out = [output_layer] if output_layer else []
        if not leave_out and not excludes:
            return {**kwargs, "match_all_linear": True}
        return {**kwargs, "exclude_modules": leave_out + [wildcard(name) for name in excludes]}
    if isinstance(targets, str):
        raise NotExpressible(
            f"the row's LoRA targets are peft's regular expression {targets!r}; AutoModel's PeftConfig "
            "matches module names and * wildcards only (target_modules, exclude_modules)")
    if excludes:
        raise NotExpressible(
            f"the row names LoRA targets {targets} and exclusions {excludes}; AutoModel's PeftConfig takes "
            "target_modules or exclude_modules, not both")
    return {**kwargs, "target_modules": [wildcard(name) for name in targets]}


def next_token_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """transformers-style labels (aligned with input_ids) as AutoModel's datasets give them: position
    t holds the token at t + 1, the last position is ignored."""
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


def parallelism_sizes(layout: Layout) -> dict:
    """`ParallelismSizes(**kwargs)` for the layout (AutoModel derives dp from the world size)."""
    return {"tp_size": layout.mesh.get("tp", 1), "ep_size": layout.mesh.get("ep", 1)}


def data_parallel_size(layout: Layout) -> int:
    """How many ranks take their own slice of each global batch: every rank but the TP split."""
    return layout.world_size // layout.mesh.get("tp", 1)


def mixed_precision(choice: str, dtype: str) -> dict | None:
    """MixedPrecisionPolicy's keyword arguments (dtype names), or None for AutoModel's default policy."""
    if choice == "automodel_default":
        return None
    return {"param_dtype": dtype, "reduce_dtype": dtype}


def call_text(auto_class: str, layout: Layout, peft: dict | None, force_hf: bool,
              precision: dict | None) -> str:
    """The documented call the cell made, for the record."""
    policy = ("" if precision is None else
              f"mp_policy=MixedPrecisionPolicy(param_dtype={precision['param_dtype']}, "
              f"reduce_dtype={precision['reduce_dtype']})")
    sizes = ", ".join(f"{k}={v}" for k, v in parallelism_sizes(layout).items())
    lora = f", peft_config=PeftConfig({', '.join(f'{k}={v!r}' for k, v in peft.items())})" if peft else ""
    return (f"NeMo{auto_class}.from_pretrained(path, distributed_setup=DistributedSetup.build("
            f"strategy=FSDP2Config({policy}), parallelism_sizes=ParallelismSizes({sizes}), "
            f"world_size={layout.world_size}){lora}, force_hf={force_hf}, dtype=...)")
