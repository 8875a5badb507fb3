"""Loading and validation: every error names the file, the key path, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.spec.load import load_matrix
from harness.spec.matrix import MatrixError
from tests.conftest import LLAMA_ROW, write_rows


def load_error(matrix_dir) -> MatrixError:
    with pytest.raises(MatrixError) as info:
        load_matrix(matrix_dir)
    return info.value


def test_repository_matrix_loads_and_covers_the_seed_table():
    matrix = load_matrix()
    assert "LlamaForCausalLM" in matrix.architectures
    assert {"sft", "lora"} <= set(matrix.methods)
    assert "single" in matrix.layouts and matrix.layouts["single"].world_size == 1


def test_valid_row_loads(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    arch = load_matrix(matrix_dir).architectures["LlamaForCausalLM"]
    assert arch.model_type == "llama" and arch.checkpoint_id == "meta-llama/Llama-3.2-1B"


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ('famillies = ["x"]', "architectures.LlamaForCausalLM.famillies", "did you mean 'families'"),
        ("moe = 3", "architectures.LlamaForCausalLM.moe", "must be true or false"),
        ('modality = "audio"', "architectures.LlamaForCausalLM.modality", "allowed: text, text+vision"),
        ('lora_exclude = "router"', "architectures.LlamaForCausalLM.lora_exclude", "a list of strings"),
        (
            'known_limits = [{ category = "weird", reason = "r" }]',
            "architectures.LlamaForCausalLM.known_limits[0].category",
            "allowed: peft-unsupported, oom",
        ),
        (
            'known_limits = [{ category = "oom", reason = "r", method = "dpo" }]',
            "architectures.LlamaForCausalLM.known_limits[0].method",
            "allowed: sft, lora",
        ),
        (
            'known_limits = [{ category = "oom", reason = "r", layout = "fsdp3" }]',
            "architectures.LlamaForCausalLM.known_limits[0].layout",
            "allowed: single",
        ),
        (
            'known_limits = [{ category = "oom" }]',
            "architectures.LlamaForCausalLM.known_limits[0].reason",
            "required but missing",
        ),
    ],
)
def test_row_errors_name_file_key_value_and_allowed(matrix_dir, extra, key, fragment):
    path = write_rows(matrix_dir, LLAMA_ROW + extra + "\n")
    error = load_error(matrix_dir)
    assert str(path) in str(error)
    assert key in str(error)
    assert fragment in str(error)


def test_missing_required_key(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW.replace('model_type = "llama"\n', ""))
    error = load_error(matrix_dir)
    assert error.key == "architectures.LlamaForCausalLM.model_type"
    assert "required" in str(error)


def test_unknown_auto_class_lists_the_allowed_ones(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW.replace("AutoModelForCausalLM", "AutoModelForCasualLM"))
    error = load_error(matrix_dir)
    assert "did you mean 'AutoModelForCausalLM'" in str(error)
    assert "AutoModelForImageTextToText" in str(error)


def test_empty_examples(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW.replace('["meta-llama/Llama-3.2-1B"]', "[]"))
    assert "at least one example" in str(load_error(matrix_dir))


def test_syntax_error_names_the_file(matrix_dir):
    path = write_rows(matrix_dir, LLAMA_ROW + "broken = [\n")
    error = load_error(matrix_dir)
    assert str(path) in str(error) and "not valid TOML" in str(error)


def test_duplicate_row_across_files(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    second = write_rows(matrix_dir, LLAMA_ROW, name="more.toml")
    error = load_error(matrix_dir)
    assert str(second) in str(error) and "already defined in" in str(error)


def test_unknown_top_level_section(matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW + "[architecture.Foo]\nx = 1\n")
    error = load_error(matrix_dir)
    assert "did you mean 'architectures'" in str(error)


@pytest.mark.parametrize(
    ("layout", "key", "fragment"),
    [
        ("world_size = 2\nmesh = { dp_shard = 4 }", "layouts.bad.world_size", "product of the mesh"),
        ("world_size = 2\nmesh = { dp = 2 }", "layouts.bad.mesh.dp", "allowed: dp_shard, tp, ep"),
        ("world_size = 4\nmesh = { tp = 2, ep = 2 }", "layouts.bad.mesh", "expert parallel needs tp = 1"),
        ('world_size = 1\nmesh = {}\nconstraints = ["tp_divides_head"]', "layouts.bad.constraints[0]",
         "did you mean 'tp_divides_heads'"),
        ("world_size = 0\nmesh = {}", "layouts.bad.world_size", "at least 1"),
        ('world_size = "2"\nmesh = {}', "layouts.bad.world_size", "must be an integer"),
    ],
)
def test_layout_errors(matrix_dir, layout, key, fragment):
    path = write_rows(matrix_dir, LLAMA_ROW + f'\n[layouts.bad]\nsummary = "x"\n{layout}\n', "layouts.toml")
    error = load_error(matrix_dir)
    assert str(path) in str(error) and key in str(error) and fragment in str(error)


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ('[methods.dpo]\nsummary = "x"\nlr = -1.0', "methods.dpo.lr", "must be a positive number"),
        ('[methods.q]\nsummary = "x"\nlr = 1.0\nlora = { rank = 8 }', "methods.q.lora.alpha", "required"),
        ('[tiers.t]\nsummary = "x"\nsource = "hub"\ndtype = "float32"\nsteps = 3\nbatch_size = 1\n'
         "seq_len = 8", "tiers.t.source", "allowed: tiny, checkpoint, real-shape"),
        ('[tiers.t]\nsummary = "x"\nsource = "tiny"\ndtype = "fp8"\nsteps = 3\nbatch_size = 1\n'
         "seq_len = 8", "tiers.t.dtype", "allowed: float32"),
        ('[tiers.t]\nsummary = "x"\nsource = "tiny"\ndtype = "float32"\nsteps = 1\nbatch_size = 1\n'
         "seq_len = 8", "tiers.t.steps", "at least 2"),
        ('[checks.parity]\nsummary = "x"\ntiers = ["huge"]', "checks.parity.tiers[0]", "allowed: tiny, real"),
        ('[checks.parity]\nsummary = "x"\ntiers = ["tiny"]\nlayouts = ["fsdp9"]', "checks.parity.layouts[0]",
         "allowed: single"),
        ('[checks.lint]\nsummary = "x"\ntiers = ["tiny"]', "checks.lint",
         # harness/checks/*.py
         "allowed: dcp_roundtrip, generate, implementation_parity, parity, peft_roundtrip, train"),
        ('[checks.parity]\nsummary = "x"\ntiers = ["tiny"]\nload_layouts = { single = "fsdp7" }',
         "checks.parity.load_layouts.single", "allowed: single"),
        ("[tolerances.float64]\nrtol = 1.0\natol = 1.0", "tolerances.float64", "allowed: float32"),
    ],
)
def test_axis_errors(matrix_dir, section, key, fragment):
    write_rows(matrix_dir, LLAMA_ROW)
    if section.startswith("[checks.parity]"):  # the real axes define parity: redefine it here
        axes = matrix_dir / "axes.toml"
        text = axes.read_text()
        start = text.index("[checks.parity]")
        axes.write_text(text[:start] + text[text.index("\n[", start) + 1:])
    path = write_rows(matrix_dir, section + "\n", "extra.toml")
    error = load_error(matrix_dir)
    assert str(path) in str(error) and key in str(error) and fragment in str(error)


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(MatrixError, match="matrix directory not found"):
        load_matrix(tmp_path / "nope")
    with pytest.raises(MatrixError, match=r"holds no \*.toml files"):
        load_matrix(tmp_path)


def test_no_architectures(matrix_dir):
    error = load_error(matrix_dir)
    assert error.key == "architectures" and "no entries" in str(error)


def test_known_limit_scoped_to_transformers_versions():
    import transformers

    from harness.spec.matrix import KnownLimit

    here = transformers.__version__
    cell = ("sft", "tp", "tiny", "parity")
    assert KnownLimit("numerics", "r", layout="tp", transformers=f"=={here}").covers(*cell)
    assert not KnownLimit("numerics", "r", layout="tp", transformers=f"!={here}").covers(*cell)
    assert not KnownLimit("numerics", "r", layout="fsdp2", transformers=f"=={here}").covers(*cell)


def test_known_limit_with_a_bad_version_specifier_names_the_key(tmp_path):
    import shutil

    for f in Path("matrix").glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "architectures.toml"
    limit = '{ category = "oom", reason = "r", transformers = "5.0 or so" },\n'
    head = "[architectures.LlamaForCausalLM]\n"
    text = path.read_text()
    row = text.index(head)
    at = text.index("known_limits = [\n", row) + len("known_limits = [\n")  # the row's first limit
    path.write_text(text[:at] + limit + text[at:])
    with pytest.raises(MatrixError) as info:
        load_matrix(tmp_path)
    assert "architectures.LlamaForCausalLM.known_limits[0].transformers" in str(info.value)
    assert "version specifier" in str(info.value)


FUTURE_ROW = """
[architectures.FutureForCausalLM]
families = ["Future"]
examples = ["org/future-7b"]
auto_class = "AutoModelForCausalLM"
model_type = "future_model_type"
"""


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("", 'fix the typo; if a release newer than those has it, declare min_transformers = "<its first'),
        ('min_transformers = "5.0.0"\n', "though the row's min_transformers = '5.0.0' says it should"),
    ],
)
def test_a_model_type_the_release_lacks_is_an_error_unless_a_newer_release_is_declared(matrix_dir, extra,
                                                                                      fragment):
    path = write_rows(matrix_dir, FUTURE_ROW + extra)
    error = load_error(matrix_dir)
    assert str(error).startswith(f"{path}: architectures.FutureForCausalLM.model_type = 'future_model_type': "
                                 "transformers ")
    assert fragment in str(error)


@pytest.mark.parametrize("extra", ['min_transformers = "99.0"\n', "trust_remote_code = true\n"])
def test_a_model_type_of_a_newer_release_or_of_remote_code_loads(matrix_dir, extra):
    write_rows(matrix_dir, FUTURE_ROW + extra)
    assert "FutureForCausalLM" in load_matrix(matrix_dir).architectures


def test_tiny_keys_that_the_modeling_code_reads_are_accepted(matrix_dir):
    """Qwen3MoeConfig's signature has no head_dim, but its attention reads getattr(config, "head_dim")."""
    row = LLAMA_ROW.replace("LlamaForCausalLM", "Qwen3MoeForCausalLM").replace('"llama"', '"qwen3_moe"')
    write_rows(matrix_dir, row + "moe = true\ntiny = { head_dim = 16 }\n")
    assert load_matrix(matrix_dir).architectures["Qwen3MoeForCausalLM"].tiny == {"head_dim": 16}
    write_rows(matrix_dir, row + "moe = true\ntiny = { head_dims = 16 }\n")
    assert "takes no argument 'head_dims' (did you mean 'head_dim'?)" in str(load_error(matrix_dir))


def test_registries_name_what_the_code_implements():
    import importlib

    from harness.spec import matrix, parse
    from harness.stacks.native import placement
    from harness.stacks.native.stack import NativeStack

    assert set(matrix.API_MESH_DIMS) == set(placement.PLACEMENTS)
    assert set(matrix.CHECK_OPTIONS) <= set(parse.CHECKS)
    # The checks are the modules of harness/checks/ that the runner can run; helpers are not checks.
    assert {"train", "parity"} <= set(parse.CHECKS) and "common" not in parse.CHECKS
    assert all(callable(importlib.import_module(f"harness.checks.{name}").run) for name in parse.CHECKS)
    # The script choices are the stacks' (those without a trainer of their own): each one a stack
    # reads is declared, its default is a declared value, and the stack's code branches on a declared
    # value (the other is the branch not taken).
    from harness.stacks.automodel.stack import AutoModelStack

    stacks = (NativeStack, AutoModelStack)
    assert set().union(*(s.choice_defaults for s in stacks)) == set(matrix.CHOICES)
    for stack in stacks:
        package = Path(importlib.import_module(stack.__module__).__file__).parent
        # a stack's own package, and the loop it trains with (harness/stacks/loop.py)
        code = "\n".join(p.read_text() for p in [*package.rglob("*.py"), package.parent / "loop.py"])
        for name, default in stack.choice_defaults.items():
            code = code.replace(f'"{name}": "{default}"', "")
        for name, default in stack.choice_defaults.items():
            assert default in matrix.CHOICES[name], name
            assert any(f'== "{value}"' in code for value in matrix.CHOICES[name]), name


def test_a_warm_release_cache_loads_without_importing_torch_or_transformers(monkeypatch):
    """The transformers-aware checks read the cached facts: a later process imports neither."""
    import subprocess
    import sys

    from harness.spec import release_facts

    monkeypatch.setattr(release_facts, "_MEMO", {})
    load_matrix()  # fills this test session's cache (COMPAT_HARNESS_CACHE), not only the memo
    code = ("import sys; from harness.spec.load import load_matrix; load_matrix(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_each_table_key_is_declared_once_with_its_type_and_meaning():
    """The schemas are the dataclasses' `toml_key` fields: every key has a doc, a required key has
    no default, and the fields the loader fills in (a row's name, its file) are not keys."""
    import dataclasses

    from harness.spec import matrix, parse

    for name in dir(parse):
        if not name.endswith("_SCHEMA"):
            continue
        for key, spec in getattr(parse, name).items():
            assert spec.doc, (name, key)
    for schema, cls, filled_in in ((parse.ARCH_SCHEMA, matrix.Architecture, {"name", "source_file"}),
                                   (parse.TIER_SCHEMA, matrix.Tier, {"name"})):
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        assert set(by_name) - set(schema) == filled_in
        for key, spec in schema.items():
            assert spec.required == (by_name[key].default is dataclasses.MISSING
                                     and by_name[key].default_factory is dataclasses.MISSING), key
