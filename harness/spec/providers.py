"""The table of package-provided real checkpoints (matrix/providers.toml) as data.

It sits in the matrix stage because the matrix names its entries: a row's `real_provider` is
checked against it at load (harness/spec/parse.py), and the matrix stage imports nothing of the
checkpoint stage. Turning an entry into a Hugging Face checkpoint (packages, GGUF, the HF cache)
is harness/ckpt/providers.py, which reads this table.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.spec.matrix import DEFAULT_MATRIX_DIR, LIST_STR, STR, toml_key

# How a package ships a checkpoint (harness/ckpt/providers.py builds each kind).
PROVIDER_KINDS = ("gguf", "gguf-parts", "directory")


@dataclass(frozen=True)
class ProviderSpec:
    """One package-provided checkpoint: where its files are and what it becomes.

    kind: "gguf" (one GGUF file in `module`), "gguf-parts" (chunks in `parts`, concatenated
    and checked against the sha256 listed in `sha256_list` inside `module`), or "directory"
    (a plain HF checkpoint directory at `path` inside `module`, copied as is).
    """

    name: str  # the provider's name in the matrix (`real_provider`), = the main package
    repo_id: str = toml_key(STR, "The hub-style id it is filed under in the HF cache.")
    kind: str = toml_key(STR, "How the package ships it (PROVIDER_KINDS).")
    module: str = toml_key(STR, "Import name of the main package (located, never imported).")
    path: str = toml_key(STR, "The GGUF file name, or the directory inside `module`.")
    packages: tuple[str, ...] = toml_key(LIST_STR, "The distributions whose versions key the snapshot.")
    expected_class: str = toml_key(STR, "What `from_pretrained` of the materialised snapshot should build.")
    auto_class: str = toml_key(STR, "The auto class that loads it.", default="AutoModelForCausalLM")
    quantisation: str = toml_key(STR, "As the GGUF file names it; \"\" for plain weights.", default="")
    parts: tuple[tuple[str, str], ...] = toml_key(
        list, "(module, file inside it) per chunk, in order.", default=())
    sha256_list: str = toml_key(STR, "A SHA256SUMS file inside `module` naming `path`.", default="")
    notes: str = toml_key(STR, "Free text for the docs.", default="")


PROVIDERS_FILE = DEFAULT_MATRIX_DIR / "providers.toml"


def load_providers(path: Path = PROVIDERS_FILE) -> dict[str, ProviderSpec]:
    """The provider table of the matrix (matrix/providers.toml): data, like every other row.

    Read here rather than through load_matrix, because validating a row's `real_provider`
    (harness/spec/parse.py) needs this table and a provider must also work on its own (`make real`).
    """
    with path.open("rb") as handle:
        table = tomllib.load(handle).get("providers", {})
    specs = {}
    for name, body in table.items():
        fields = {**body, "packages": tuple(body["packages"]),
                  "parts": tuple(tuple(part) for part in body.get("parts", ()))}
        specs[name] = ProviderSpec(name=name, **fields)
    return specs


PROVIDERS: dict[str, ProviderSpec] = load_providers()
BY_REPO_ID: dict[str, ProviderSpec] = {spec.repo_id: spec for spec in PROVIDERS.values()}


def spec_for(provider: str | ProviderSpec) -> ProviderSpec:
    """A spec from a provider name, a hub-style id it provides, or a spec (returned as is)."""
    if isinstance(provider, ProviderSpec):
        return provider
    spec = PROVIDERS.get(provider) or BY_REPO_ID.get(provider)
    if spec is None:
        raise KeyError(
            f"unknown real-checkpoint provider {provider!r}; known: {', '.join(sorted(PROVIDERS))}"
        )
    return spec
