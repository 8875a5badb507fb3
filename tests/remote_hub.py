"""A Hugging Face cache snapshot built around a remote-code folder of tests/remote_code/.

The layout is the hub cache's own (models--ORG--NAME/refs/main, snapshots/REVISION/...), so the
harness resolves it with huggingface_hub's offline lookup exactly as it resolves cached hub code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

REMOTE_CODE = Path(__file__).parent / "remote_code"


def cache_snapshot(cache: Path, repo: str, folder: str, model_type: str, config_class: str,
                   model_class: str) -> Path:
    """Write the snapshot of `repo` holding folder's code and a config.json with its auto_map."""
    files = sorted((REMOTE_CODE / folder).glob("*.py"))
    revision = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, snapshot / path.name)
    config_module = next(p.stem for p in files if p.stem.startswith("configuration_"))
    modeling_module = next(p.stem for p in files if p.stem.startswith("modeling_"))
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": model_type,
        "architectures": [model_class],
        "auto_map": {"AutoConfig": f"{config_module}.{config_class}",
                     "AutoModelForCausalLM": f"{modeling_module}.{model_class}"},
    }))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


# The three test models: (repo, folder, model_type, config class, model class).
MODELS = {
    "TinyRemoteForCausalLM": ("testorg/tiny-remote", "good", "tinyremote", "TinyRemoteConfig"),
    "TinyBrokenForCausalLM": ("testorg/tiny-broken", "broken", "tinybroken", "TinyBrokenConfig"),
    "TinyEmptyForCausalLM": ("testorg/tiny-empty", "empty_init", "tinyempty", "TinyEmptyConfig"),
}


def cache_all(cache: Path) -> None:
    for model_class, (repo, folder, model_type, config_class) in MODELS.items():
        cache_snapshot(cache, repo, folder, model_type, config_class, model_class)


def rows() -> str:
    """Matrix rows for the three models (remote code, so trust_remote_code = true)."""
    return "".join(f"""
[architectures.{model_class}]
families = ["{folder}"]
examples = ["{repo}"]
auto_class = "AutoModelForCausalLM"
model_type = "{model_type}"
trust_remote_code = true
""" for model_class, (repo, folder, model_type, _) in MODELS.items())
