"""Remote code from the local HF cache, behind the opt-in: real transformers on tiny hub-style models.

tests/remote_code/ holds three small remote-code models (one good, one written for transformers 4
that reads `config.pruned_heads`, one with a `torch.empty` weight); tests/remote_hub.py puts them
into a Hugging Face cache of the test's own. The matrix runs in a subprocess, as users run it, so
the opt-in travels as it does for them: the flag sets the environment variable that xdist workers
and pool ranks inherit.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.ckpt import implementations
from harness.failures import CellFailure
from harness.spec.matrix import Architecture
from tests.conftest import write_rows
from tests.remote_hub import cache_all, cache_snapshot, rows

ABSENT_ROW = """
[architectures.TinyAbsentForCausalLM]
families = ["absent"]
examples = ["testorg/not-cached"]
auto_class = "AutoModelForCausalLM"
model_type = "tinyabsent"
trust_remote_code = true
"""


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache_all(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setenv("COMPAT_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(implementations.OPT_IN_ENV, raising=False)
    return cache


def run(pytester, matrix_dir, *args):
    results = pytester.path / "records.jsonl"
    outcome = pytester.runpytest_subprocess(str(matrix_dir), "--matrix-dir", str(matrix_dir), "--results",
                                            str(results), "-p", "no:cacheprovider", "-m", "cpu", "--tier",
                                            "tiny", *args)
    records = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    return outcome, records


def test_opted_in_good_code_passes_broken_code_fails_in_its_own_words(pytester, matrix_dir, hub):
    write_rows(matrix_dir, rows() + ABSENT_ROW)
    outcome, records = run(pytester, matrix_dir, "--trust-remote-code", "--layout", "single,fsdp2",
                           "--check", "train,dcp_roundtrip,generate", "--variant", "default")
    verdicts = Counter((r["architecture"], r["status"], r["category"]) for r in records)
    # train, dcp_roundtrip, generate for sft; train, generate for lora; under single and fsdp2
    assert verdicts == {("TinyRemoteForCausalLM", "pass", None): 10,
                        ("TinyBrokenForCausalLM", "fail", "error"): 10,
                        ("TinyEmptyForCausalLM", "fail", "init"): 10,
                        ("TinyAbsentForCausalLM", "skip", "remote-code"): 10}, verdicts
    assert outcome.ret == 1  # failing cells, not a harness error (3)
    by_arch = {r["architecture"]: r for r in records}
    broken = by_arch["TinyBrokenForCausalLM"]["message"]
    assert broken == "AttributeError: 'TinyBrokenConfig' object has no attribute 'pruned_heads'"
    assert "logit_scale" in by_arch["TinyEmptyForCausalLM"]["message"]
    assert ("compat-harness prefetch --code-only --arch TinyAbsentForCausalLM"
            in by_arch["TinyAbsentForCausalLM"]["message"])
    good = [r for r in records if r["architecture"] == "TinyRemoteForCausalLM"]
    assert {r["layout"] for r in good} == {"single", "fsdp2"}
    code = good[0]["code"]
    snapshot = next((hub / "models--testorg--tiny-remote" / "snapshots").iterdir())
    assert (code["kind"], code["repo"]) == ("remote-code", "testorg/tiny-remote")
    assert code["revision"] == snapshot.name
    assert code["files"] == {p.name: implementations.sha256(p) for p in snapshot.glob("*.py")}
    # save_pretrained carried the code along: the tiny checkpoint reloads through the real path
    tiny = next(p for p in (hub.parent / "cache" / "tiny").glob("TinyRemoteForCausalLM-*") if p.is_dir())
    assert {"modeling_tinyremote.py", "configuration_tinyremote.py"} <= {p.name for p in tiny.iterdir()}
    assert "auto_map" in json.loads((tiny / "config.json").read_text())


def test_without_the_opt_in_remote_rows_skip_naming_the_flag(pytester, matrix_dir, hub):
    write_rows(matrix_dir, rows())
    outcome, records = run(pytester, matrix_dir, "--layout", "single", "--check", "train")
    assert outcome.ret == 0
    assert {(r["status"], r["category"]) for r in records} == {("skip", "remote-code")} and len(records) == 6
    assert all("only with --trust-remote-code (or COMPAT_HARNESS_TRUST_REMOTE_CODE=1)" in r["message"]
               for r in records)
    assert not (hub.parent / "modules").exists() or not any((hub.parent / "modules").rglob("*.py"))


def _arch(trust: bool, model_type: str = "tinyremote") -> Architecture:
    return Architecture(name="TinyRemoteForCausalLM", families=("t",), examples=("testorg/tiny-remote",),
                        auto_class="AutoModelForCausalLM", model_type=model_type, source_file="m.toml",
                        trust_remote_code=trust)


@pytest.mark.parametrize(("row_flag", "opt_in"), [(False, False), (False, True), (True, False), (True, True)])
def test_remote_code_runs_only_with_the_row_flag_and_the_opt_in(hub, monkeypatch, row_flag, opt_in):
    if opt_in:
        monkeypatch.setenv(implementations.OPT_IN_ENV, "1")
    arch = _arch(row_flag)
    assert implementations.trust_remote_code(arch) == (row_flag and opt_in)
    before = set(sys.modules)
    if row_flag and opt_in:
        assert implementations.config_class(arch).__name__ == "TinyRemoteConfig"
        return
    with pytest.raises(CellFailure) as failure:
        implementations.config_class(arch)
    # a row without the flag is looked up in transformers only; with it but no opt-in, a skip
    assert failure.value.category == ("remote-code" if row_flag else "needs-newer-transformers")
    assert not any("tinyremote" in name for name in set(sys.modules) - before)


def test_a_snapshot_without_the_rows_auto_class_is_a_matrix_error(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache_snapshot(cache, "testorg/tiny-remote", "good", "tinyremote", "TinyRemoteConfig",
                              "TinyRemoteForCausalLM")
    config = json.loads((snapshot / "config.json").read_text())
    del config["auto_map"]["AutoModelForCausalLM"]
    (snapshot / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv(implementations.OPT_IN_ENV, "1")
    with pytest.raises(CellFailure, match="maps no AutoModelForCausalLM") as failure:
        implementations.cached_remote_code(_arch(True))
    assert failure.value.category == "matrix-error"


def test_the_real_tier_loads_cached_weights_through_the_cached_code(hub, monkeypatch):
    """A remote-code row's real checkpoint: the snapshot's weights, built by the snapshot's code."""
    import torch

    from harness.ckpt.models import checkpoint_for, load_model
    from harness.spec.load import load_matrix

    monkeypatch.setenv(implementations.OPT_IN_ENV, "1")
    arch = _arch(True)
    snapshot = next((hub / "models--testorg--tiny-remote" / "snapshots").iterdir())
    config = implementations.config_class(arch)(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    config.auto_map = json.loads((snapshot / "config.json").read_text())["auto_map"]
    config._name_or_path = str(snapshot)
    import transformers

    torch.manual_seed(0)
    built = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    built.save_pretrained(snapshot)  # the snapshot now holds weights, as a cached hub checkpoint does
    path = checkpoint_for(arch, load_matrix().tiers["real"], load_matrix())
    assert path == snapshot
    loaded = load_model(arch, path, "float32", "cpu")
    assert type(loaded).__module__.startswith("transformers_modules.")
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))


def test_trl_loads_a_remote_code_row_trusting_its_code_exactly_when_the_harness_does():
    """SFTTrainer loads the model itself (model_init_kwargs): the same trust as every other call."""
    from harness.spec.load import load_matrix
    from harness.stacks.trl.config import sft_config_kwargs

    layout = load_matrix().layouts["single"]
    common = dict(dtype="float32", lr=1e-3, steps=2, global_batch=2, device="cpu", output_dir="/tmp/x",
                  completion_only=False)
    trusted, call = sft_config_kwargs(layout, trust_remote_code=True, **common)
    assert trusted["model_init_kwargs"]["trust_remote_code"] is True and "trust_remote_code=True" in call
    plain, call = sft_config_kwargs(layout, **common)
    assert "trust_remote_code" not in plain["model_init_kwargs"] and "trust_remote_code" not in call


def _planted(hub, folder: str, model_type: str, config_cls: str, model_cls: str, monkeypatch):
    """A test-written snapshot of testorg/<model_type> and its row's tiny checkpoint (opted in)."""
    from harness.ckpt.models import checkpoint_for
    from harness.spec.load import load_matrix

    monkeypatch.setenv(implementations.OPT_IN_ENV, "1")
    repo = f"testorg/{model_type}"
    cache_snapshot(hub, repo, folder, model_type, config_cls, model_cls)
    arch = Architecture(name=model_cls, families=("t",), examples=(repo,), auto_class="AutoModelForCausalLM",
                        model_type=model_type, source_file="m.toml", trust_remote_code=True)
    matrix = load_matrix()
    return arch, checkpoint_for(arch, matrix.tiers["tiny"], matrix)


def test_a_buffer_computed_at_build_but_not_at_load_fails_init_naming_the_buffer(hub, monkeypatch):
    """InternLM (v1)'s pattern: the build from a config passes the scan (the checkpoint was saved),
    the load of that checkpoint leaves the buffer uncomputed, and the scan names it."""
    from harness.ckpt.models import load_model, reload_pretrained

    arch, path = _planted(hub, "load_buffer", "tinybuffer", "TinyBufferConfig", "TinyBufferForCausalLM",
                          monkeypatch)
    loads = (lambda: load_model(arch, path, "float32", "cpu"), lambda: reload_pretrained(arch, path, "cpu"))
    for load in loads:
        with pytest.raises(CellFailure) as failure:
            load()
        assert failure.value.category == "init"
        assert str(failure.value).endswith("buffer logit_scale.scale"), str(failure.value)
        assert f"after loading {path}" in str(failure.value)


def test_a_remote_code_checkpoints_second_load_in_a_process_behaves_as_its_first(hub, monkeypatch):
    """Code with class-level state: loaded twice from one imported module, the models differ (the
    plant works); loaded through the harness, each load imports the code afresh and both agree."""
    import torch
    import transformers

    from harness.ckpt.models import load_model

    arch, path = _planted(hub, "stateful", "tinystateful", "TinyStatefulConfig", "TinyStatefulForCausalLM",
                          monkeypatch)
    auto = transformers.AutoModelForCausalLM
    plain = [auto.from_pretrained(path, trust_remote_code=True) for _ in range(2)]
    assert plain[0].logit_factor != plain[1].logit_factor
    first, second = (load_model(arch, path, "float32", "cpu") for _ in range(2))
    assert first.logit_factor == second.logit_factor == 1.0
    batch = torch.arange(8).reshape(1, 8)
    assert torch.equal(first(batch).logits, second(batch).logits)


def test_a_row_spelling_the_hub_class_otherwise_is_a_matrix_error_naming_hf_class(hub, monkeypatch):
    """The Baichuan case: the row is named BaiChuanForCausalLM, the hub code builds
    BaichuanForCausalLM. Found from the cached config.json before any code runs, with the fix."""
    monkeypatch.setenv(implementations.OPT_IN_ENV, "1")
    arch = Architecture(name="TinyremoteForCausalLM", families=("t",), examples=("testorg/tiny-remote",),
                        auto_class="AutoModelForCausalLM", model_type="tinyremote", source_file="m.toml",
                        trust_remote_code=True)
    with pytest.raises(CellFailure, match="set hf_class = 'TinyRemoteForCausalLM' for TinyremoteForCausalLM "
                                          "in m.toml") as failure:
        implementations.cached_remote_code(arch)
    assert failure.value.category == "matrix-error"
    fixed = Architecture(name="TinyremoteForCausalLM", families=("t",), examples=("testorg/tiny-remote",),
                         auto_class="AutoModelForCausalLM", model_type="tinyremote", source_file="m.toml",
                         trust_remote_code=True, hf_class="TinyRemoteForCausalLM")
    assert implementations.cached_remote_code(fixed).repo == "testorg/tiny-remote"


def test_the_baichuan_row_expects_the_class_its_hub_code_builds():
    """Baichuan2's auto_map (modeling_baichuan.BaichuanForCausalLM) cannot be read here (no hub):
    the row carries that spelling, so its cells reach the model code instead of matrix-error."""
    from harness.spec.load import load_matrix

    arch = load_matrix().architectures["BaiChuanForCausalLM"]
    expected = ("baichuan-inc/Baichuan2-13B-Chat", "BaichuanForCausalLM")
    assert (arch.remote_repo, arch.expected_class) == expected
