"""What the installed transformers offers, as plain data: its model types, the arguments each
config class takes, the class each auto class builds for a model type, its TP styles, its MoE
experts kernels and the fields of its `DistributedConfig` (what its documented layout calls take).

The matrix names things that only transformers can confirm (harness/spec/release_check.py checks
them at load). Asking transformers costs seconds, because it imports torch, and listing the
matrix's cells must stay fast. So the answers are computed once per installed release and kept
as JSON in the harness cache (`$COMPAT_HARNESS_CACHE/release-facts/<key>.json`, the key being
where transformers is installed and the size and modification time of its `__init__.py`), and
memoised within the process. The first load after installing a release pays the seconds; every
later one, in any process, reads one small file. A model type is looked up the first time a
matrix names it and added to the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_root

# Bump when what is recorded (or how) changes: older files are then ignored.
FORMAT = 2
# The auto classes a row may name, each with transformers' table of model type -> class name.
AUTO_MAPPINGS = {
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
}
# Where the registries of MoE experts kernels live (besides "eager", the models' own loop).
EXPERTS_REGISTRIES = ("ALL_EXPERTS_FUNCTIONS", "ALL_FP8_EXPERTS_FUNCTIONS")


@dataclass(frozen=True)
class ConfigFacts:
    """One config class: its name, the keyword arguments it takes, its sub-configs by attribute."""

    name: str
    keys: frozenset[str]
    sub_configs: dict[str, ConfigFacts]


@dataclass(frozen=True)
class ModelTypeFacts:
    config: ConfigFacts
    # auto class -> the classes it builds for this model type (empty: it has none for it)
    builds: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class ReleaseFacts:
    transformers: str
    model_types: frozenset[str]
    tp_styles: frozenset[str]
    experts_kernels: frozenset[str]
    distributed_config_fields: frozenset[str]
    # Only the model types that were asked about and that this release has.
    types: dict[str, ModelTypeFacts]


_MEMO: dict[str, dict] = {}


def release_facts(model_types: Iterable[str]) -> ReleaseFacts:
    """The installed release's facts, with those of `model_types` (cached on disk and in memory)."""
    wanted = set(model_types)
    key = install_key()
    data = _MEMO.get(key)
    if data is None or not _complete(data, wanted):
        data = _load_or_compute(key, wanted)
        _MEMO[key] = data
    return _facts(data, wanted)


def install_key() -> str:
    """Which transformers is installed, without importing it."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        raise ImportError("transformers is not installed: the matrix is validated against it")
    init = Path(spec.origin)
    stat = init.stat()
    text = f"{FORMAT}|{init}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file(key: str) -> Path:
    return cache_root() / "release-facts" / f"{key}.json"


def _complete(data: dict, wanted: set[str]) -> bool:
    return all(t in data["types"] or t not in data["model_types"] for t in wanted)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _load_or_compute(key: str, wanted: set[str]) -> dict:
    path = cache_file(key)
    data = _read(path)
    if data is not None and _complete(data, wanted):
        return data
    try:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            data = _read(path) or _compute_release()
            _add_types(data, wanted)
            _write(path, data)
        return data
    except OSError:  # a read-only cache: answer from memory, every process pays the seconds
        data = _compute_release()
        _add_types(data, wanted)
        return data


def _write(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, sort_keys=True)
    os.replace(tmp, path)


def _facts(data: dict, wanted: set[str]) -> ReleaseFacts:
    types = {t: ModelTypeFacts(_config_from(data["types"][t]["config"]),
                               {a: tuple(names) for a, names in data["types"][t]["builds"].items()})
             for t in sorted(wanted) if t in data["types"]}
    return ReleaseFacts(data["transformers"], frozenset(data["model_types"]), frozenset(data["tp_styles"]),
                        frozenset(data["experts_kernels"]), frozenset(data["distributed_config_fields"]),
                        types)


def _config_from(raw: dict) -> ConfigFacts:
    return ConfigFacts(raw["name"], frozenset(raw["keys"]),
                       {k: _config_from(v) for k, v in raw["sub_configs"].items()})


# --- asking transformers (the slow part, once per release) ---------------------------------------

def _compute_release() -> dict:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return {"format": FORMAT, "transformers": transformers.__version__,
            "model_types": sorted(CONFIG_MAPPING_NAMES), "tp_styles": _tp_styles(),
            "experts_kernels": _experts_kernels(),
            "distributed_config_fields": _distributed_config_fields(), "types": {}}


def _tp_styles() -> list[str]:
    try:
        from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES
    except ImportError:  # a release without the registry: the styles are not checked
        return []
    return sorted(ALL_PARALLEL_STYLES.keys())


def _experts_kernels() -> list[str]:
    import transformers.modeling_utils as modeling_utils

    names = {"eager"}
    for registry in EXPERTS_REGISTRIES:
        names |= set(getattr(modeling_utils, registry, {}).keys())
    return sorted(names)


def _distributed_config_fields() -> list[str]:
    """The keyword arguments `DistributedConfig` takes (none: a release without the class)."""
    import dataclasses

    try:
        from transformers.distributed import DistributedConfig
    except ImportError:
        return []
    if dataclasses.is_dataclass(DistributedConfig):
        return sorted(f.name for f in dataclasses.fields(DistributedConfig))
    return sorted(name for name in inspect.signature(DistributedConfig.__init__).parameters if name != "self")


def as_history_facts(facts: ReleaseFacts) -> dict[str, frozenset[str]]:
    """The facts harness/spec/release_history.py keeps for every measured release."""
    return {"model_types": facts.model_types, "experts_kernels": facts.experts_kernels,
            "distributed_config_fields": facts.distributed_config_fields}


def _add_types(data: dict, wanted: set[str]) -> None:
    missing = [t for t in sorted(wanted) if t in data["model_types"] and t not in data["types"]]
    if not missing:
        return
    import transformers.models.auto.modeling_auto as modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # default configs of some releases warn about their own values
    try:
        for model_type in missing:
            builds = {}
            for auto_class, table in AUTO_MAPPINGS.items():
                names = getattr(modeling_auto, table, {}).get(model_type)
                builds[auto_class] = [names] if isinstance(names, str) else list(names or ())
            data["types"][model_type] = {"config": _config_facts(CONFIG_MAPPING[model_type]),
                                         "builds": builds}
    finally:
        logging.set_verbosity(verbosity)


# Where a model's code reads a config attribute: `config.NAME`, getattr/hasattr(config, "NAME").
CONFIG_READS = (
    re.compile(r"config\.([A-Za-z_][A-Za-z0-9_]*)"),
    re.compile(r"(?:getattr|hasattr)\(\s*[A-Za-z_.]*config[A-Za-z_]*\s*,\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']"),
)


def _config_facts(cls) -> dict:
    """The arguments a config class takes: its signature, its attribute_map and its defaults, and
    the attributes its model's code reads (`getattr(config, "head_dim", ...)` makes `head_dim` a
    real setting of Qwen3MoeConfig although its signature does not name it)."""
    keys = set(getattr(cls, "attribute_map", None) or {}) | _modeling_reads(cls)
    with contextlib.suppress(TypeError, ValueError):  # no signature: the other sources only
        keys |= {name for name, p in inspect.signature(cls.__init__).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    sub_configs = {}
    try:
        default = cls()
    except Exception:  # noqa: BLE001 - a class without a default instance: its signature only
        default = None
    if default is not None:
        keys |= set(default.to_dict())
        for name in getattr(cls, "sub_configs", None) or {}:
            sub = getattr(default, name, None)
            if sub is not None and hasattr(sub, "to_dict"):
                sub_configs[name] = _config_facts(type(sub))
    return {"name": cls.__name__, "keys": sorted(keys), "sub_configs": sub_configs}


def _modeling_reads(cls) -> set[str]:
    """The config attributes read by the modeling module next to the config's module (its source
    text is read, the module is not imported)."""
    module = cls.__module__.replace(".configuration_", ".modeling_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return set()
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return set()
    text = Path(spec.origin).read_text()
    return {name for pattern in CONFIG_READS for name in pattern.findall(text)}
