"""Whose model code a cell runs: transformers' own class, the hub's remote code, or the custom registry.

- **transformers**: the config class of the row's model type, `trust_remote_code=False` everywhere.
- **remote code** (`trust_remote_code = true` rows): the code of the row's `remote_code_repo` as it
  lies in the local HF cache, and only under the opt-in (`--trust-remote-code`, or
  COMPAT_HARNESS_TRUST_REMOTE_CODE=1, which is how the opt-in reaches pool ranks and xdist
  workers). Nothing is fetched: the hub is set offline. Without the opt-in, or without the code in
  the cache, the cell skips with the flag or the prefetch command that would give it a verdict. A
  row without the flag never runs remote code, whatever the command line says.
- **custom** (a row's `implementation` and `config_class`): a class outside transformers,
  registered with AutoConfig and the row's auto class in every process that builds the model (the
  runner's and every pool rank's) before anything is built, so `from_pretrained` takes the path
  users take after registering it themselves.

`provenance` says which one ran, for the record: the remote repo, its snapshot revision and the
sha256 of every code file; the custom module and the sha256 of its files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from harness.ckpt.hub_cache import cached_snapshot
from harness.failures import CellFailure
from harness.spec.matrix import CUSTOM, REMOTE_CODE, TRANSFORMERS, Architecture
from harness.spec.release_check import row_gap

OPT_IN_ENV = "COMPAT_HARNESS_TRUST_REMOTE_CODE"
OPT_IN_FLAG = "--trust-remote-code"
# The files of a remote-code snapshot that make up its code (hashed into the record).
CODE_SUFFIX = ".py"


def remote_code_allowed() -> bool:
    """Whether this run opted in to running cached remote code (the flag sets the variable)."""
    return os.environ.get(OPT_IN_ENV, "").strip().lower() in ("1", "true", "yes")


def trust_remote_code(arch: Architecture) -> bool:
    """The `trust_remote_code` every loading call of this row passes: the row's flag and the opt-in."""
    return arch.trust_remote_code and remote_code_allowed()


def prefetch_command(arch: Architecture) -> str:
    return f"compat-harness prefetch --code-only --arch {arch.name}"


@dataclass(frozen=True)
class RemoteCode:
    """A remote-code row's code as the local HF cache holds it."""

    repo: str
    revision: str
    path: Path
    auto_map: dict

    @property
    def files(self) -> dict[str, str]:
        """sha256 of every code file of the snapshot, by name."""
        return {p.name: sha256(p) for p in sorted(self.path.glob(f"*{CODE_SUFFIX}"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(repo: str) -> Path | None:
    """The cached snapshot directory of `repo` (its `main` ref), or None; never a download."""
    try:
        return cached_snapshot(repo)
    except Exception:  # noqa: BLE001 - every lookup failure means "not in the cache"
        return None


def cached_remote_code(arch: Architecture) -> RemoteCode:
    """The row's cached remote code, or the skip that says what would give the cell a verdict."""
    if not arch.trust_remote_code:
        raise ValueError(f"{arch.name} is not a remote-code row")
    if not remote_code_allowed():
        raise CellFailure(REMOTE_CODE, f"{arch.name} is hub remote code ({arch.remote_repo}), run from the "
                                       f"local HF cache only with {OPT_IN_FLAG} (or {OPT_IN_ENV}=1)")
    path = _snapshot(arch.remote_repo)
    config = path / "config.json" if path else None
    if config is None or not config.exists() or not any(path.glob(f"*{CODE_SUFFIX}")):
        raise CellFailure(REMOTE_CODE, f"{arch.remote_repo}'s code is not in the local HF cache: run "
                                       f"`{prefetch_command(arch)}` where the hub is reachable, then copy "
                                       "the cache here (or set HF_HUB_CACHE)")
    auto_map = json.loads(config.read_text()).get("auto_map") or {}
    if arch.auto_class not in auto_map:
        raise CellFailure("matrix-error",
                          f"{arch.remote_repo}'s config.json maps no {arch.auto_class} to remote code (its "
                          f"auto_map: {sorted(auto_map)}); fix auto_class or remote_code_repo of {arch.name} "
                          f"in {arch.source_file}")
    mapped = _mapped_class(auto_map[arch.auto_class])
    if mapped != arch.expected_class:
        key = "hf_class" if arch.hf_class else "hf_class (absent: the row's name is taken)"
        raise CellFailure("matrix-error",
                          f"{arch.remote_repo}'s config.json maps {arch.auto_class} to {mapped}, but "
                          f"{arch.name} expects {arch.expected_class} ({key}): set hf_class = {mapped!r} "
                          f"for {arch.name} in {arch.source_file}")
    return RemoteCode(arch.remote_repo, path.name, path, auto_map)


def _mapped_class(reference) -> str:
    """The class name of an auto_map entry ("module.Class", "repo--module.Class", or a list whose
    first entry is the slow class)."""
    first = reference[0] if isinstance(reference, list | tuple) else reference
    return str(first).rsplit(".", 1)[-1]


def _import(reference: str):
    """The object of a "pkg.module:Name" reference."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


_REGISTERED: set[tuple[str, str]] = set()


def register_custom(arch: Architecture) -> None:
    """Register the row's custom classes with AutoConfig and its auto class (once per process)."""
    key = (arch.implementation, arch.auto_class)
    if key in _REGISTERED:
        return
    import transformers

    config_cls, model_cls = _import(arch.config_class), _import(arch.implementation)
    transformers.AutoConfig.register(arch.model_type, config_cls, exist_ok=True)
    getattr(transformers, arch.auto_class).register(config_cls, model_cls, exist_ok=True)
    _REGISTERED.add(key)


def ship_custom_code(arch: Architecture, checkpoint: Path) -> dict:
    """Put the row's custom code into a saved checkpoint the way such code ships to users: its code
    files beside the weights and an `auto_map` in config.json naming the config and model classes.

    Remote code on the hub ships so, and tools that load a path themselves rely on it: TRL 1.16's
    `create_model_from_path` takes any architecture not in transformers for remote code and reads
    `config.auto_map` (trl/trainer/utils.py). Every loader here still runs the registered class:
    with the class registered in-process and `trust_remote_code=False`, transformers prefers the
    local class over the auto_map (its `resolve_trust_remote_code` with local code present).
    Returns the auto_map written."""
    import shutil

    config_cls, model_cls = _import(arch.config_class), _import(arch.implementation)
    package = Path(importlib.util.find_spec(arch.implementation.partition(":")[0]).origin).parent
    for path in sorted(package.glob(f"*{CODE_SUFFIX}")):
        if path.name != "__init__.py":
            shutil.copy(path, checkpoint / path.name)
    auto_map = {"AutoConfig": f"{config_cls.__module__.rpartition('.')[2]}.{config_cls.__name__}",
                arch.auto_class: f"{model_cls.__module__.rpartition('.')[2]}.{model_cls.__name__}"}
    config_file = checkpoint / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = auto_map
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return auto_map


def prepare(arch: Architecture) -> None:
    """Make the row's implementation loadable in this process, before anything is built: register a
    custom class; for remote code, the opt-in and the cached code (else the skip saying why)."""
    if arch.implementation_kind == CUSTOM:
        register_custom(arch)
    elif arch.implementation_kind == REMOTE_CODE:
        cached_remote_code(arch)


def config_class(arch: Architecture):
    """The config class the row's tiny config is built from, or a categorised skip saying why not."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if arch.implementation_kind == CUSTOM:
        register_custom(arch)
        return _import(arch.config_class)
    if arch.implementation_kind == REMOTE_CODE:
        code = cached_remote_code(arch)
        # The documented call: AutoConfig resolves the snapshot's auto_map (or a stock config
        # class, for remote model code over a native config) and registers it for saving.
        return type(transformers.AutoConfig.from_pretrained(code.path, trust_remote_code=True))
    gap = row_gap(arch)
    if gap is not None:  # a release older than the newest measured one, which could build the row
        raise CellFailure("needs-newer-transformers", f"{arch.name}: {gap}")
    return CONFIG_MAPPING[arch.model_type]


def load_config(arch: Architecture, path):
    """AutoConfig of a saved checkpoint of this row, trusting its code exactly when the row may."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code(arch))


def provenance(arch: Architecture) -> dict:
    """What the record says about the code that ran: its kind and where it came from, with hashes."""
    import transformers

    kind = arch.implementation_kind
    if kind == TRANSFORMERS:
        return {"kind": kind, "transformers": transformers.__version__}
    if kind == CUSTOM:
        module = arch.implementation.partition(":")[0]
        spec = importlib.util.find_spec(module)
        files = {}
        if spec is not None and spec.origin:
            for path in sorted(Path(spec.origin).parent.glob(f"*{CODE_SUFFIX}")):
                files[path.name] = sha256(path)
        return {"kind": kind, "module": module, "model_class": arch.implementation,
                "config_class": arch.config_class, "files": files}
    path = _snapshot(arch.remote_repo) if remote_code_allowed() else None
    if path is None:
        return {"kind": kind, "repo": arch.remote_repo, "revision": None, "files": {}}
    code = RemoteCode(arch.remote_repo, path.name, path, {})
    return {"kind": kind, "repo": code.repo, "revision": code.revision, "files": code.files}
