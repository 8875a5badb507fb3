"""Read matrix/*.toml and check each table on its own: its keys against its schema, each value
against its domain, the names it refers to against the tables they name.

The matrix is the only place models are described, so a mistake in it must be caught here,
before any cell runs, with a message that names the file, the key path, the bad value and
what is allowed. What spans tables is harness/spec/consistency.py, and what only the installed
transformers can confirm is harness/spec/release_check.py; harness/spec/load.py runs all three.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from harness.failures import DECLARABLE_CATEGORIES
from harness.spec.constraints import CONSTRAINT_CHECKS, CONSTRAINTS_FOR_DIM
from harness.spec.matrix import (
    API_MESH_DIMS,
    AUTO_CLASSES,
    CHECK_OPTIONS,
    CHOICES,
    CLAIM_METHODS,
    DEVICE_TYPES,
    DTYPES,
    FORCE_HF,
    IMPLEMENTATION_NAMES,
    INT,
    LIST_STR,
    LORA_SCHEMA,
    LORA_TARGET_KEYWORDS,
    MESH_DIMS,
    MODALITIES,
    NUM,
    PARITY_TRANSFORMS,
    REFERENCE_STACK,
    REPO_ROOT,
    STACK_NAMES,
    TIER_DATA,
    TIER_SOURCES,
    TINY_DEFAULT_GROUPS,
    TOLERANCE_SCHEMA,
    Api,
    Architecture,
    Check,
    Choice,
    Claim,
    ExpertsKernel,
    Gpu,
    Key,
    KnownLimit,
    Layout,
    Matrix,
    MatrixError,
    Method,
    RealShape,
    ReleaseSet,
    StackSpec,
    Tier,
    schema_of,
)
from harness.spec.providers import PROVIDER_KINDS, PROVIDERS, ProviderSpec

# --- the schemas: key -> Key(type, required, doc, default), from the dataclasses' fields ----------

ARCH_SCHEMA = schema_of(Architecture)
LIMIT_SCHEMA = schema_of(KnownLimit)
METHOD_SCHEMA = schema_of(Method)
LAYOUT_SCHEMA = schema_of(Layout)
API_SCHEMA = schema_of(Api)
EXPERTS_SCHEMA = schema_of(ExpertsKernel)
RELEASE_SET_SCHEMA = schema_of(ReleaseSet)
CHOICE_SCHEMA = schema_of(Choice)
STACK_SCHEMA = schema_of(StackSpec)
TIER_SCHEMA = schema_of(Tier)
REAL_SHAPE_SCHEMA = schema_of(RealShape)
CLAIM_SCHEMA = schema_of(Claim)
GPU_SCHEMA = schema_of(Gpu)
CHECK_SCHEMA = schema_of(Check)
# The package-provided checkpoints (harness/spec/providers.py reads the same table).
PROVIDER_SCHEMA = schema_of(ProviderSpec)

# The checks: each is a module harness/checks/<name>.py with a top-level `run(cr)`, the function
# the runner calls (harness/run/runner.py), and the modules are the one list of them. They are
# found by reading the files, never by importing them: a check imports torch, and the matrix stage
# imports nothing of the later stages. A helper module (common.py) has no `run`.
CHECKS_DIR = Path(__file__).resolve().parent.parent / "checks"
_CHECK_ENTRY = re.compile(r"^def run\(", re.MULTILINE)
CHECKS = tuple(sorted(p.stem for p in CHECKS_DIR.glob("*.py") if _CHECK_ENTRY.search(p.read_text())))
# The tables a matrix file may hold, in the order messages list them.
TOP_LEVEL = ("architectures", "methods", "layouts", "tiers", "checks", "tiny_defaults", "tolerances",
             "real_shapes", "claims", "gpus", "providers", "apis", "experts", "release_sets", "choices",
             "stacks")

# The shapes of names and ids. Axis names end up in cell ids (joined by "-", a shape after "@", a
# variant after "+") and in comma lists on the command line, so none of those characters fit.
AXIS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")
# transformers' file sizes (save_pretrained's max_shard_size), e.g. "200KB", "5GB", "5GiB".
FILE_SIZE = re.compile(r"[0-9]+ ?([KMGT]i?)?[Bb]", re.IGNORECASE)
# A module path in a tp_plan: dotted names, `*` for the layer number.
# A class of the custom registry: "pkg.module:ClassName".
CLASS_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
MODULE_PATH = re.compile(r"[A-Za-z0-9_*]+(\.[A-Za-z0-9_*]+)*")


def _type_name(expected: Any) -> str:
    if expected == LIST_STR:
        return "a list of strings"
    if expected is dict:
        return "a table"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected)
    return names[expected]


def _type_ok(value: Any, expected: Any) -> bool:
    if expected == LIST_STR:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if (expected is int or expected == (int, float)) and isinstance(value, bool):
        return False
    return isinstance(value, expected)


def check_table(file: str, path: str, table: Any, schema: dict[str, Key]) -> dict:
    """Reject unknown keys, missing required keys and wrong types, naming the key path."""
    if not isinstance(table, dict):
        raise MatrixError(file, path, table, "must be a table")
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
            raise MatrixError(file, f"{path}.{key}", value, hint, sorted(schema))
        expected = schema[key].kind
        if not _type_ok(value, expected):
            raise MatrixError(file, f"{path}.{key}", value, f"must be {_type_name(expected)}")
    for key, spec in schema.items():
        if spec.required and key not in table:
            raise MatrixError(file, f"{path}.{key}", None, "is required but missing")
    return table


def _must_be_one_of(file: str, path: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        problem = f"unknown name (did you mean {close[0]!r}?)" if close else "unknown name"
        raise MatrixError(file, path, value, problem, list(allowed))


# --- value domains: numbers, names, specifiers --------------------------------------------------

def _positive(file: str, key: str, value: Any) -> None:
    if not (_type_ok(value, NUM) and math.isfinite(value) and value > 0):
        raise MatrixError(file, key, value, "must be a positive number")


def _at_least(file: str, key: str, value: Any, low: int) -> None:
    if not (_type_ok(value, INT) and value >= low):
        raise MatrixError(file, key, value, f"must be an integer of at least {low}")


def _non_negative(file: str, key: str, value: Any) -> None:
    if not (_type_ok(value, NUM) and math.isfinite(value) and value >= 0):
        raise MatrixError(file, key, value, "must be a number of at least 0")


def _fraction(file: str, key: str, value: Any) -> None:
    if not (_type_ok(value, NUM) and 0 <= value < 1):
        raise MatrixError(file, key, value, "must be a fraction, at least 0 and below 1")


def _shaped(file: str, key: str, value: Any, pattern: re.Pattern, what: str) -> None:
    if not (isinstance(value, str) and pattern.fullmatch(value)):
        raise MatrixError(file, key, value, f"must be {what}")


def _words(file: str, key: str, values: list[str]) -> None:
    """A list of names or texts: no empty entry, no entry twice."""
    for i, value in enumerate(values):
        if not value.strip():
            raise MatrixError(file, f"{key}[{i}]", value, "must not be empty")
        if value in values[:i]:
            raise MatrixError(file, f"{key}[{i}]", value, "is listed twice")


def _axis_name(file: str, key: str, name: str) -> None:
    _shaped(file, key, name, AXIS_NAME, "a name of letters, digits, '_', '.' and '-' (cell ids hold it)")


def _url(file: str, key: str, value: str) -> None:
    if not value.startswith("https://"):
        raise MatrixError(file, key, value, "must be an https:// URL")


def _regex(file: str, key: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise MatrixError(file, key, value, f"is not a regular expression: {exc}") from None


def _version(file: str, key: str, value: str, example: str = "5.17.0") -> None:
    from packaging.version import InvalidVersion, Version

    try:
        Version(value)
    except InvalidVersion:
        raise MatrixError(file, key, value, f'must be one exact release, e.g. "{example}"') from None


def _version_spec(file: str, key: str, value: str) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise MatrixError(file, key, value,
                          'is not a version specifier; write e.g. "<5.1" or ">=5.0,<5.13"') from None


def _lora_targets(file: str, key: str, targets: str | list) -> None:
    """peft's target_modules: a keyword, one regular expression, or a list of module names."""
    if isinstance(targets, str):
        if targets not in LORA_TARGET_KEYWORDS:
            _regex(file, key, targets)
        return
    if not targets:
        raise MatrixError(file, key, targets, "must name at least one module (or be \"all-linear\")")
    for i, target in enumerate(targets):
        if not isinstance(target, str):
            raise MatrixError(file, f"{key}[{i}]", target, "must be a string")
    _words(file, key, targets)


# --- reading ------------------------------------------------------------------------------------

def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(path, "<syntax>", None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MatrixError(path, "<syntax>", None, f"not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise MatrixError(path, "<file>", None, f"cannot be read: {exc.strerror or exc}") from None


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


# --- one validator per table ---------------------------------------------------------------------

def _limits(file: str, path: str, raw: list, matrix_names: dict[str, tuple]) -> tuple[KnownLimit, ...]:
    limits = []
    for i, item in enumerate(raw):
        where = f"{path}.known_limits[{i}]"
        check_table(file, where, item, LIMIT_SCHEMA)
        _must_be_one_of(file, f"{where}.category", item["category"], DECLARABLE_CATEGORIES)
        if not item["reason"].strip():
            raise MatrixError(file, f"{where}.reason", item["reason"], "must say why the cell fails")
        for package in ("transformers", "peft"):
            if package in item:
                _version_spec(file, f"{where}.{package}", item[package])
        if "upstream" in item:
            _url(file, f"{where}.upstream", item["upstream"])
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
    _shaped(file, path, name, CLASS_NAME, "a class name (letters, digits and '_')")
    check_table(file, path, body, ARCH_SCHEMA)
    _must_be_one_of(file, f"{path}.auto_class", body["auto_class"], AUTO_CLASSES)
    _must_be_one_of(file, f"{path}.modality", body.get("modality", "text"), MODALITIES)
    vision = body["auto_class"] == "AutoModelForImageTextToText"
    if (body.get("modality", "text") == "text+vision") != vision:
        raise MatrixError(file, f"{path}.modality", body.get("modality", "text"),
                          f"contradicts auto_class {body['auto_class']!r}: image-text-to-text models are "
                          "modality \"text+vision\", every other auto class is \"text\"")
    for key, what in (("families", "model family"), ("examples", "example checkpoint")):
        if not body[key]:
            raise MatrixError(file, f"{path}.{key}", [], f"needs at least one {what}")
        _words(file, f"{path}.{key}", body[key])
    for i, example in enumerate(body["examples"]):
        _shaped(file, f"{path}.examples[{i}]", example, HUB_ID, "a hub id such as \"org/name\"")
    _shaped(file, f"{path}.model_type", body["model_type"], MODEL_TYPE, "a model type such as \"llama\"")
    if "hf_class" in body:
        _shaped(file, f"{path}.hf_class", body["hf_class"], CLASS_NAME, "a class name")
    if "min_transformers" in body:
        _version(file, f"{path}.min_transformers", body["min_transformers"], "5.23.0")
    _implementation_keys(file, path, body)
    if "real_checkpoint" in body:
        _shaped(file, f"{path}.real_checkpoint", body["real_checkpoint"], HUB_ID,
                "a hub id such as \"org/name\"")
    if "real_start_loss_max" in body:
        _positive(file, f"{path}.real_start_loss_max", body["real_start_loss_max"])
    if "real_provider" in body:
        # The repository's table (harness/spec/providers.py), which the real tier materialises from.
        _must_be_one_of(file, f"{path}.real_provider", body["real_provider"], sorted(PROVIDERS))
        provided = PROVIDERS[body["real_provider"]].repo_id
        if body.get("real_checkpoint") != provided:
            raise MatrixError(file, f"{path}.real_checkpoint", body.get("real_checkpoint"),
                              f"real_provider {body['real_provider']!r} provides {provided}; set "
                              f"real_checkpoint = {provided!r}")
    if "lora_targets" in body:
        _lora_targets(file, f"{path}.lora_targets", body["lora_targets"])
    for key in ("lora_exclude", "sft_frozen", "recipes"):
        _words(file, f"{path}.{key}", body.get(key, []))
    for key, style in body.get("tp_plan", {}).items():
        _shaped(file, f'{path}.tp_plan."{key}"', key, MODULE_PATH,
                "a module path from the model's root, e.g. \"model.layers.*.self_attn.o_proj\"")
        if not isinstance(style, str):
            raise MatrixError(file, f'{path}.tp_plan."{key}"', style, "must be the name of a TP style")
    if "parity_renames" in body:
        _renames(file, f"{path}.parity_renames", body["parity_renames"])
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


def _implementation_keys(file: str, path: str, body: dict) -> None:
    """Remote code and the custom registry: well-formed references, given together, in a row they fit."""
    if "remote_code_repo" in body:
        _shaped(file, f"{path}.remote_code_repo", body["remote_code_repo"], HUB_ID,
                "a hub id such as \"org/name\"")
        if not body.get("trust_remote_code"):
            raise MatrixError(file, f"{path}.remote_code_repo", body["remote_code_repo"],
                              "names remote code for a row without trust_remote_code = true; drop it or set "
                              "trust_remote_code = true")
    for key, other in (("implementation", "config_class"), ("config_class", "implementation")):
        if key not in body:
            continue
        _shaped(file, f"{path}.{key}", body[key], CLASS_REF, "a class reference \"pkg.module:ClassName\"")
        if other not in body:
            raise MatrixError(file, f"{path}.{key}", body[key],
                              f"needs {other} as well: the custom registry registers the config class with "
                              "AutoConfig and the model class with the row's auto class")


def _layout(file: str, name: str, body: dict, apis: dict) -> Layout:
    path = f"layouts.{name}"
    _axis_name(file, path, name)
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
    if "batch_size" in body:
        _at_least(file, f"{path}.batch_size", body["batch_size"], 1)
    constraints = body.get("constraints", [])
    for i, constraint in enumerate(constraints):
        _must_be_one_of(file, f"{path}.constraints[{i}]", constraint, tuple(CONSTRAINT_CHECKS))
    _words(file, f"{path}.constraints", constraints)
    sharded = tuple(dim for dim in MESH_DIMS if body["mesh"].get(dim, 1) > 1)
    for dim in sharded:
        missing = [c for c in CONSTRAINTS_FOR_DIM.get(dim, ()) if c not in constraints]
        if missing:
            raise MatrixError(file, f"{path}.constraints", constraints,
                              f"a layout with mesh dim {dim} = {body['mesh'][dim]} must declare "
                              f"{', '.join(missing)}, so that the cells it cannot run are pruned with "
                              "the reason instead of failing")
    for i, api in enumerate(body.get("apis", [])):
        _must_be_one_of(file, f"{path}.apis[{i}]", api, sorted(apis))
        if API_MESH_DIMS[api] != sharded:
            raise MatrixError(file, f"{path}.apis[{i}]", api,
                              f"shards over mesh dims {', '.join(API_MESH_DIMS[api])}, but this layout's "
                              f"mesh shards over {', '.join(sharded) or 'nothing'}",
                              [a for a, dims in API_MESH_DIMS.items() if dims == sharded and a in apis])
    _words(file, f"{path}.apis", body.get("apis", []))
    if body["world_size"] > 1 and not body.get("apis"):
        raise MatrixError(file, f"{path}.apis", None, "a multi-rank layout must name the documented call(s) "
                                                      "that apply it", sorted(apis))
    return Layout(name=name, summary=body["summary"], world_size=body["world_size"],
                  mesh=dict(body["mesh"]), constraints=tuple(constraints),
                  required=body.get("required", False), batch_size=body.get("batch_size"),
                  apis=tuple(body.get("apis", ())))


def _api(file: str, name: str, body: dict, names: dict[str, tuple]) -> Api:
    path = f"apis.{name}"
    _must_be_one_of(file, path, name, tuple(API_MESH_DIMS))
    check_table(file, path, body, API_SCHEMA)
    for axis, key in (("check", "checks"), ("tier", "tiers")):
        for i, value in enumerate(body.get(key, [])):
            _must_be_one_of(file, f"{path}.{key}[{i}]", value, names[axis])
        _words(file, f"{path}.{key}", body.get(key, []))
    if "docs" in body:
        _url(file, f"{path}.docs", body["docs"])
    if "since" in body:
        _version(file, f"{path}.since", body["since"], "5.19.0")
    _words(file, f"{path}.needs", body.get("needs", []))
    removed = body.get("removed", {})
    if removed:
        if sorted(removed) != ["release", "url"]:
            raise MatrixError(file, f"{path}.removed", removed,
                              'must be {release = "5.N.0", url = "<the changelog entry that announced it>"}')
        _version(file, f"{path}.removed.release", removed["release"], "5.20.0")
        _url(file, f"{path}.removed.url", removed["url"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}
    return Api(name=name, **fields)


def _experts_kernel(file: str, name: str, body: dict, names: dict[str, tuple]) -> ExpertsKernel:
    path = f"experts.{name}"
    _axis_name(file, path, name)
    check_table(file, path, body, EXPERTS_SCHEMA)
    for axis, key in (("layout", "layouts"), ("check", "checks"), ("tier", "tiers")):
        for i, value in enumerate(body.get(key, [])):
            _must_be_one_of(file, f"{path}.{key}[{i}]", value, names[axis])
        _words(file, f"{path}.{key}", body.get(key, []))
    for i, device in enumerate(body.get("devices", [])):
        _must_be_one_of(file, f"{path}.devices[{i}]", device, DEVICE_TYPES)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}
    return ExpertsKernel(name=name, **fields)


def _release_set(file: str, name: str, body: dict) -> ReleaseSet:
    path = f"release_sets.{name}"
    check_table(file, path, body, RELEASE_SET_SCHEMA)
    for package in ("transformers", "peft"):
        _version(file, f"{path}.{package}", body[package])
    for package, version in body.get("also", {}).items():
        if not isinstance(version, str):
            raise MatrixError(file, f"{path}.also.{package}", version,
                              'must be one exact release, e.g. "1.15.0"')
        _version(file, f"{path}.also.{package}", version, "1.15.0")
    return ReleaseSet(name=name, **body)


def _choice(file: str, name: str, body: dict) -> Choice:
    path = f"choices.{name}"
    _must_be_one_of(file, path, name, tuple(CHOICES))
    check_table(file, path, body, CHOICE_SCHEMA)
    for i, value in enumerate(body["allowed"]):
        if value not in CHOICES[name]:
            raise MatrixError(file, f"{path}.allowed[{i}]", value,
                              "is not a value the harness implements for this choice", CHOICES[name])
    _must_be_one_of(file, f"{path}.value", body["value"], body["allowed"])
    return Choice(name=name, value=body["value"], allowed=tuple(body["allowed"]), summary=body["summary"],
                  why=body["why"])


def _stack(file: str, name: str, body: dict, names: dict[str, tuple]) -> StackSpec:
    path = f"stacks.{name}"
    _must_be_one_of(file, path, name, STACK_NAMES)
    check_table(file, path, body, STACK_SCHEMA)
    for axis, key in (("layout", "layouts"), ("method", "methods"), ("check", "checks"), ("tier", "tiers")):
        for i, value in enumerate(body.get(key, [])):
            _must_be_one_of(file, f"{path}.{key}[{i}]", value, names[axis])
        _words(file, f"{path}.{key}", body.get(key, []))
    for i, device in enumerate(body.get("devices", [])):
        _must_be_one_of(file, f"{path}.devices[{i}]", device, DEVICE_TYPES)
    for i, value in enumerate(body.get("multi_rank_checks", [])):
        _must_be_one_of(file, f"{path}.multi_rank_checks[{i}]", value, body.get("checks") or names["check"])
    for i, value in enumerate(body.get("implementations", [])):
        _must_be_one_of(file, f"{path}.implementations[{i}]", value, ("default", FORCE_HF))
    if body.get("claims_file") and not (REPO_ROOT / body["claims_file"]).is_file():
        raise MatrixError(file, f"{path}.claims_file", body["claims_file"],
                          "names no file of this repository (a path such as \"matrix/architectures.toml\")")
    for i, package in enumerate(body.get("packages", [])):
        _shaped(file, f"{path}.packages[{i}]", package, CLASS_NAME, "an import name")
    if body.get("docs"):
        _url(file, f"{path}.docs", body["docs"])
    if body.get("packages") and not body.get("install"):
        raise MatrixError(file, f"{path}.install", None,
                          "a stack that needs packages must say how to install them "
                          "(e.g. pip install 'compat-harness[trl]')")
    return StackSpec(name=name, **{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})


def _method(file: str, name: str, body: dict) -> Method:
    path = f"methods.{name}"
    _axis_name(file, path, name)
    check_table(file, path, body, METHOD_SCHEMA)
    _positive(file, f"{path}.lr", body["lr"])
    if "lora" in body:
        lora = check_table(file, f"{path}.lora", body["lora"], LORA_SCHEMA)
        _at_least(file, f"{path}.lora.rank", lora["rank"], 1)
        _positive(file, f"{path}.lora.alpha", lora["alpha"])
        if "dropout" in lora:
            _fraction(file, f"{path}.lora.dropout", lora["dropout"])
        _lora_targets(file, f"{path}.lora.target_modules", lora["target_modules"])
    return Method(name=name, summary=body["summary"], lr=float(body["lr"]), lora=body.get("lora", {}),
                  source_file=file)


def _tier(file: str, name: str, body: dict, methods: dict[str, Method], layouts: dict[str, Layout]) -> Tier:
    path = f"tiers.{name}"
    _axis_name(file, path, name)
    check_table(file, path, body, TIER_SCHEMA)
    _must_be_one_of(file, f"{path}.source", body["source"], TIER_SOURCES)
    _must_be_one_of(file, f"{path}.dtype", body["dtype"], DTYPES)
    _must_be_one_of(file, f"{path}.data", body.get("data", "random"), TIER_DATA)
    for i, device in enumerate(body.get("devices", [])):
        _must_be_one_of(file, f"{path}.devices[{i}]", device, DEVICE_TYPES)
    for i, layout in enumerate(body.get("layouts", [])):
        _must_be_one_of(file, f"{path}.layouts[{i}]", layout, list(layouts))
    for key in ("devices", "layouts"):
        _words(file, f"{path}.{key}", body.get(key, []))
    if "devices" in body and not body["devices"]:
        raise MatrixError(file, f"{path}.devices", [], "needs at least one device type", DEVICE_TYPES)
    for method, lr in body.get("lr", {}).items():
        _must_be_one_of(file, f"{path}.lr", method, list(methods))
        _positive(file, f"{path}.lr.{method}", lr)
    if "tolerance" in body:
        _tolerance(file, f"{path}.tolerance", body["tolerance"], partial=True)
    for key in ("steps", "batch_size", "seq_len"):
        _at_least(file, f"{path}.{key}", body[key], 1)
    if body["steps"] < 2:
        raise MatrixError(file, f"{path}.steps", body["steps"], "must be at least 2 to see a loss fall")
    for key in ("start_loss_max", "cell_timeout_s"):
        if key in body:
            _positive(file, f"{path}.{key}", body[key])
    if "heldout_fall_min" in body:
        _fraction(file, f"{path}.heldout_fall_min", body["heldout_fall_min"])
    for key in ("reference_start_band", "reference_fall_ratio_min", "reference_grad_norm_ratio_min",
                "loss_fall_min"):
        if key in body:
            _fraction(file, f"{path}.{key}", body[key])
    if "heldout_batch_size" in body:
        _at_least(file, f"{path}.heldout_batch_size", body["heldout_batch_size"], 1)
    if "dataset" in body:
        dataset = Path(body["dataset"])
        if dataset.suffix not in (".jsonl", ".parquet") or not dataset.is_file():
            raise MatrixError(file, f"{path}.dataset", body["dataset"],
                              "must be an existing .jsonl or .parquet file (relative paths are read "
                              "from the directory pytest runs in)")
    fields = dict(body)
    for key in ("devices", "layouts"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Tier(name=name, **fields)


def _real_shape(file: str, name: str, body: dict, architectures: dict) -> RealShape:
    path = f"real_shapes.{name}"
    if "@" in name or "[" in name:
        raise MatrixError(file, path, name, "a shape name may not contain '@' or '[' (it ends cell ids)")
    _axis_name(file, path, name)
    check_table(file, path, body, REAL_SHAPE_SCHEMA)
    _must_be_one_of(file, f"{path}.architecture", body["architecture"], sorted(architectures))
    _shaped(file, f"{path}.checkpoint", body["checkpoint"], HUB_ID, "a hub id such as \"org/name\"")
    _at_least(file, f"{path}.expected_params", body["expected_params"], 1)
    return RealShape(name=name, source_file=file, **body)


def _claim(file: str, name: str, body: dict, shapes: dict) -> Claim:
    path = f"claims.{name}"
    check_table(file, path, body, CLAIM_SCHEMA)
    _must_be_one_of(file, f"{path}.method", body["method"], CLAIM_METHODS)
    if "shape" in body:
        _must_be_one_of(file, f"{path}.shape", body["shape"], sorted(shapes))
    for key in ("gpus", "tp", "pp", "ep"):
        _at_least(file, f"{path}.{key}", body.get(key, 1), 1)
    _positive(file, f"{path}.gpu_memory_gib", body["gpu_memory_gib"])
    parallel = body.get("tp", 1) * body.get("pp", 1) * body.get("ep", 1)
    if parallel > body["gpus"]:
        raise MatrixError(file, f"{path}.gpus", body["gpus"],
                          f"is fewer than tp x pp x ep = {parallel}, the GPUs one replica needs")
    return Claim(name=name, **body)


def _gpu(file: str, name: str, body: dict) -> Gpu:
    path = f"gpus.{name}"
    check_table(file, path, body, GPU_SCHEMA)
    if not body["match"]:
        raise MatrixError(file, f"{path}.match", [], "needs at least one device-name fragment")
    _words(file, f"{path}.match", body["match"])
    _positive(file, f"{path}.bf16_tflops", body["bf16_tflops"])
    _positive(file, f"{path}.memory_gib", body["memory_gib"])
    return Gpu(name=name, match=tuple(body["match"]), bf16_tflops=float(body["bf16_tflops"]),
               memory_gib=float(body["memory_gib"]), source=body.get("source", ""))


def _check(file: str, name: str, body: dict, names: dict[str, tuple]) -> Check:
    path = f"checks.{name}"
    _must_be_one_of(file, path, name, CHECKS)
    check_table(file, path, body, CHECK_SCHEMA)
    if not body["tiers"]:
        raise MatrixError(file, f"{path}.tiers", [], "needs at least one tier", names["tier"])
    for axis, key in (("tier", "tiers"), ("method", "methods"), ("layout", "layouts")):
        for i, value in enumerate(body.get(key, [])):
            _must_be_one_of(file, f"{path}.{key}[{i}]", value, names[axis])
        _words(file, f"{path}.{key}", body.get(key, []))
    for i, value in enumerate(body.get("auto_classes", [])):
        _must_be_one_of(file, f"{path}.auto_classes[{i}]", value, AUTO_CLASSES)
    for saved, loaded in body.get("load_layouts", {}).items():
        _must_be_one_of(file, f"{path}.load_layouts", saved, body.get("layouts") or names["layout"])
        _must_be_one_of(file, f"{path}.load_layouts.{saved}", loaded, names["layout"])
    _check_options(file, f"{path}.options", name, body.get("options", {}))
    return Check(name=name, summary=body["summary"], tiers=tuple(body["tiers"]),
                 methods=tuple(body.get("methods", ())), layouts=tuple(body.get("layouts", ())),
                 load_layouts=dict(body.get("load_layouts", {})), options=dict(body.get("options", {})),
                 auto_classes=tuple(body.get("auto_classes", ())),
                 not_reference=bool(body.get("not_reference", False)))


def _check_options(file: str, path: str, check: str, options: dict) -> None:
    check_table(file, path, options, CHECK_OPTIONS.get(check, {}))
    if "export_max_shard_size" in options:
        _shaped(file, f"{path}.export_max_shard_size", options["export_max_shard_size"], FILE_SIZE,
                "a file size such as \"200KB\" or \"5GB\"")
    if "new_tokens" in options:
        _at_least(file, f"{path}.new_tokens", options["new_tokens"], 1)
    for stack, bounds in options.get("curve_tolerance", {}).items():
        _tolerance(file, f"{path}.curve_tolerance.{stack}", bounds)
    _renames(file, f"{path}.renames", options.get("renames", {}))
    for dtype, bounds in options.get("merge_tolerance", {}).items():
        _must_be_one_of(file, f"{path}.merge_tolerance", dtype, DTYPES)
        _tolerance(file, f"{path}.merge_tolerance.{dtype}", bounds)


def _renames(file: str, path: str, table: Any) -> None:
    """implementation_parity's renames: per owner ("stack" or "stack~implementation") a list of
    [regex, replacement] or [regex, replacement, transform] rules, each regex compiling."""
    if not isinstance(table, dict):
        raise MatrixError(file, path, table, "must be a table of owner = [[regex, replacement], ...]")
    for owner, rules in table.items():
        where = f'{path}."{owner}"'
        ok = isinstance(rules, list) and all(
            isinstance(rule, list) and len(rule) in (2, 3) and all(isinstance(x, str) for x in rule)
            for rule in rules)
        if not ok:
            raise MatrixError(file, where, rules, "must be a list of [regex, replacement] or [regex, "
                                                  "replacement, transform] rules (transforms: "
                                                  f"{list(PARITY_TRANSFORMS)})")
        for i, rule in enumerate(rules):
            try:
                re.compile(rule[0])
            except re.error as exc:
                raise MatrixError(file, f"{where}[{i}]", rule[0],
                                  f"is not a regular expression: {exc}") from exc
            if len(rule) == 3:
                _must_be_one_of(file, f"{where}[{i}][2]", rule[2], list(PARITY_TRANSFORMS))


def _tolerance(file: str, path: str, body: Any, partial: bool = False) -> dict:
    """A table of parity bounds; `partial`: a tier's overrides, every key optional."""
    schema = TOLERANCE_SCHEMA
    if partial:
        schema = {k: v._replace(required=False) for k, v in schema.items()}
    check_table(file, path, body, schema)
    for key, value in body.items():
        _non_negative(file, f"{path}.{key}", value)
    return body


def _tiny_defaults(file: str, group: str, body: Any) -> dict:
    path = f"tiny_defaults.{group}"
    _must_be_one_of(file, path, group, TINY_DEFAULT_GROUPS)
    if not isinstance(body, dict):
        raise MatrixError(file, path, body, "must be a table")
    for key, value in body.items():
        _at_least(file, f"{path}.{key}", value, 1)
    return body


def _provider(file: str, name: str, body: dict) -> dict:
    path = f"providers.{name}"
    check_table(file, path, body, PROVIDER_SCHEMA)
    _must_be_one_of(file, f"{path}.kind", body["kind"], PROVIDER_KINDS)
    _shaped(file, f"{path}.repo_id", body["repo_id"], HUB_ID, "a hub id such as \"org/name\"")
    if not body["packages"]:
        raise MatrixError(file, f"{path}.packages", [], "needs at least one package")
    _words(file, f"{path}.packages", body["packages"])
    for i, part in enumerate(body.get("parts", [])):
        if not (isinstance(part, list) and len(part) == 2 and all(isinstance(x, str) for x in part)):
            raise MatrixError(file, f"{path}.parts[{i}]", part, "must be a [module, file] pair of strings")
    if body["kind"] == "gguf-parts":
        for key in ("parts", "sha256_list"):
            if not body.get(key):
                raise MatrixError(file, f"{path}.{key}", None, "is required for kind \"gguf-parts\"")
    return body


# --- the whole matrix ----------------------------------------------------------------------------

def parse_matrix(files: list[Path]) -> tuple[Matrix, dict[str, dict[str, str]]]:
    """The Matrix of `files`, each table checked on its own (or MatrixError), and for messages
    of the later checks the file that defines each entry: section -> name -> file."""
    sections = _merge_files(files)
    for axis in ("methods", "layouts", "tiers", "checks", "architectures"):
        if not sections[axis]:
            raise MatrixError(files[0].parent, axis, None, "no entries in any matrix file")

    for n, (f, b) in sections["providers"].items():
        _provider(f, n, b)
    for n, (f, _) in sections["apis"].items():  # before the layouts that list them
        _must_be_one_of(f, f"apis.{n}", n, tuple(API_MESH_DIMS))
    methods = {n: _method(f, n, b) for n, (f, b) in sections["methods"].items()}
    api_names = dict.fromkeys(sections["apis"])
    layouts = {n: _layout(f, n, b, api_names) for n, (f, b) in sections["layouts"].items()}
    tiers = {n: _tier(f, n, b, methods, layouts) for n, (f, b) in sections["tiers"].items()}
    names = {"method": tuple(methods), "layout": tuple(layouts), "tier": tuple(tiers)}
    checks = {n: _check(f, n, b, names) for n, (f, b) in sections["checks"].items()}
    names["check"] = tuple(checks)
    apis = {n: _api(f, n, b, names) for n, (f, b) in sections["apis"].items()}
    experts = {n: _experts_kernel(f, n, b, names) for n, (f, b) in sections["experts"].items()}
    for name, (f, _) in sections["experts"].items():
        if name in apis or name == "default":
            raise MatrixError(f, f"experts.{name}", name, "a variant name must differ from every api name "
                                                          "and from 'default' (it ends cell ids)")
    names["variant"] = ("default", *apis, *experts)
    stacks = {n: _stack(f, n, b, names) for n, (f, b) in sections["stacks"].items()}
    if stacks and REFERENCE_STACK not in stacks:
        raise MatrixError(next(iter(sections["stacks"].values()))[0], f"stacks.{REFERENCE_STACK}", None,
                          "the reference stack must be declared when any stack is (every other stack's "
                          "cells are judged beside it)")
    names["stack"] = tuple(stacks) or (REFERENCE_STACK,)
    names["implementation"] = IMPLEMENTATION_NAMES
    architectures = {
        n: _architecture(f, n, b, names) for n, (f, b) in sections["architectures"].items()
    }
    tolerances = {}
    for dtype, (f, body) in sections["tolerances"].items():
        _must_be_one_of(f, f"tolerances.{dtype}", dtype, DTYPES)
        tolerances[dtype] = _tolerance(f, f"tolerances.{dtype}", body)
    tiny_defaults = {k: _tiny_defaults(f, k, b) for k, (f, b) in sections["tiny_defaults"].items()}
    real_shapes = {n: _real_shape(f, n, b, architectures) for n, (f, b) in sections["real_shapes"].items()}
    claims = {n: _claim(f, n, b, real_shapes) for n, (f, b) in sections["claims"].items()}
    gpus = {n: _gpu(f, n, b) for n, (f, b) in sections["gpus"].items()}
    release_sets = {n: _release_set(f, n, b) for n, (f, b) in sections["release_sets"].items()}
    defaults = [n for n, s in release_sets.items() if s.default]
    if release_sets and len(defaults) != 1:
        file = sections["release_sets"][(defaults or list(release_sets))[-1]][0]
        raise MatrixError(file, "release_sets.*.default", defaults or None,
                          "exactly one release set must say `default = true`: the one `make setup` installs "
                          "from its lock (locks/NAME.txt)")
    choices = {n: _choice(f, n, b) for n, (f, b) in sections["choices"].items()}
    matrix = Matrix(
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
        apis=apis,
        experts=experts,
        release_sets=release_sets,
        choices=choices,
        **({"stacks": stacks} if stacks else {}),
    )
    files_of = {section: {name: file for name, (file, _) in entries.items()}
                for section, entries in sections.items()}
    return matrix, files_of
