"""Expansion and selection, checked as properties over generated matrices (hypothesis)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.spec.cells import Cell, all_combinations, expand, select
from harness.spec.matrix import Architecture, Check, Layout, Matrix, Method, Tier

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)


def _arch(name: str, moe: bool, heads: int) -> Architecture:
    return Architecture(name=name, families=("f",), examples=("o/m",), auto_class="AutoModelForCausalLM",
                        model_type="llama", source_file="x.toml", moe=moe,
                        tiny={"num_attention_heads": heads, "num_key_value_heads": heads})


LAYOUT_KINDS = {
    "single": ({}, ()),
    "fsdp2": ({"dp_shard": 2}, ()),
    "tp": ({"tp": 2}, ("tp_divides_heads",)),
    "tp4": ({"tp": 4}, ("tp_divides_heads",)),
    "ep": ({"ep": 2}, ("moe_only", "ep_divides_experts", "ep_excludes_tp")),
}


@st.composite
def matrices(draw) -> Matrix:
    arch_names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    archs = {n: _arch(n, draw(st.booleans()), draw(st.sampled_from([1, 2, 3, 4, 6])))
             for n in arch_names}
    methods = {n: Method(n, "m", 1e-3) for n in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))}
    layout_names = draw(st.lists(st.sampled_from(sorted(LAYOUT_KINDS)), min_size=1, unique=True))
    layouts = {}
    for name in layout_names:
        mesh, constraints = LAYOUT_KINDS[name]
        layouts[name] = Layout(name, "l", math.prod(mesh.values()), mesh, constraints)
    tier_names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    tiers = {n: Tier(n, "t", "tiny", "float32", 2, 1, 4) for n in tier_names}
    checks = {}
    for name in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
        check_tiers = draw(st.lists(st.sampled_from(tier_names), min_size=1, unique=True))
        checks[name] = Check(name, "c", tuple(check_tiers))
    return Matrix(archs, methods, layouts, tiers, checks,
                  tiny_defaults={"moe": {"num_experts": 4}}, tolerances={}, files=())


@settings(max_examples=150, deadline=None)
@given(matrices())
def test_ids_unique_and_count_is_product_minus_pruned(matrix):
    cells, pruned = expand(matrix)
    ids = [c.id for c in cells] + [p.id for p in pruned]
    assert len(ids) == len(set(ids))
    product = math.prod(len(x) for x in (matrix.architectures, matrix.methods, matrix.layouts,
                                           matrix.tiers, matrix.checks))
    assert len(cells) == product - len(pruned)
    assert all(p.reason for p in pruned)


@settings(max_examples=100, deadline=None)
@given(matrices())
def test_expansion_is_stable(matrix):
    first, pruned_first = expand(matrix)
    second, pruned_second = expand(matrix)
    assert [c.id for c in first] == [c.id for c in second]
    assert pruned_first == pruned_second


@settings(max_examples=150, deadline=None)
@given(matrices(), st.data())
def test_selection_is_a_filter(matrix, data):
    cells, _ = expand(matrix)
    selection = {
        "architecture": data.draw(st.lists(st.sampled_from(sorted(matrix.architectures)), unique=True)),
        "method": data.draw(st.lists(st.sampled_from(sorted(matrix.methods)), unique=True)),
        "layout": data.draw(st.lists(st.sampled_from(sorted(matrix.layouts)), unique=True)),
    }
    chosen = select(cells, selection)
    assert set(chosen) <= set(cells)
    expected = [c for c in cells
                if all(not want or c.axis(axis) in want for axis, want in selection.items())]
    assert chosen == expected
    assert select(cells, {}) == cells


@settings(max_examples=100, deadline=None)
@given(matrices())
def test_pruned_cells_have_the_constraint_reason(matrix):
    _, pruned = expand(matrix)
    for item in pruned:
        arch = matrix.architectures[item.cell.architecture]
        runs_on_tier = item.cell.tier in matrix.checks[item.cell.check].tiers
        if item.cell.layout == "ep" and not arch.moe and runs_on_tier:
            assert "needs a MoE model" in item.reason


def test_cell_id_is_readable():
    cell = Cell("LlamaForCausalLM", "lora", "single", "tiny", "train")
    assert cell.id == "LlamaForCausalLM-lora-single-tiny-train"


def test_all_combinations_order_is_sorted_by_architecture():
    matrix = Matrix({n: _arch(n, False, 4) for n in ("b", "a")}, {"m": Method("m", "", 1.0)},
                    {"single": Layout("single", "", 1, {})}, {"t": Tier("t", "", "tiny", "float32", 2, 1, 1)},
                    {"c": Check("c", "", ("t",))}, {}, {}, ())
    assert [c.architecture for c in all_combinations(matrix)] == ["a", "b"]


def test_cells_command_lists_the_selection_and_the_pruned_with_reasons(capsys):
    from harness import cli

    argv = ["cells", "--arch", "LlamaForCausalLM", "--layout", "single,ep", "--tier", "tiny"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert "LlamaForCausalLM-lora-single-tiny-train" in out and "6 cell(s)" in out
    pruned = [line for line in out if line.startswith("LlamaForCausalLM-sft-ep-tiny-train ")]
    assert pruned and pruned[0].split(None, 1)[1] == "layout ep (expert parallel) needs a MoE model"

    assert cli.main([*argv, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in listing["cells"]][:3] == ["LlamaForCausalLM-sft-single-tiny-train",
                                                      "LlamaForCausalLM-sft-single-tiny-dcp_roundtrip",
                                                      "LlamaForCausalLM-sft-single-tiny-generate"]
    assert {c["layout"] for c in listing["cells"]} == {"single"}
    reasons = {p["id"]: p["reason"] for p in listing["pruned"]}
    assert reasons["LlamaForCausalLM-lora-ep-tiny-train"] == "layout ep (expert parallel) needs a MoE model"
    # no --stack: the reference stack only, and the listing says so
    assert listing["selection"] == {"architecture": ["LlamaForCausalLM"], "layout": ["single", "ep"],
                                    "tier": ["tiny"], "stack": ["native"]}


def test_cells_help_says_the_pruned_are_listed_with_reasons_and_no_pruned_drops_them(capsys):
    """Error messages send users to `compat-harness cells` for what can and cannot run: its help says
    so, and --no-pruned (the one way to drop the pruned) is the only difference it makes."""
    import pytest

    from harness import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["cells", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "every pruned combination inside it" in text and "with its reason" in text
    assert "--no-pruned leave out the pruned combinations and their reasons (listed by default)" in text

    argv = ["cells", "--arch", "MixtralForCausalLM,LlamaForCausalLM", "--tier", "tiny", "--check", "train"]
    assert cli.main(argv) == 0
    full = capsys.readouterr().out.splitlines()
    assert cli.main([*argv, "--no-pruned"]) == 0
    bare = capsys.readouterr().out.splitlines()
    pruned_at = full.index(next(line for line in full if line.startswith("PRUNED ")))
    assert full[:pruned_at - 1] == bare  # the same cells; then a blank line and the pruned table
    assert not any(line.startswith("PRUNED ") for line in bare)
    assert full[-1].endswith("pruned combination(s)") and len(full) > len(bare) + 2


def test_every_command_that_a_message_recommends_exists(capsys):
    """A hint such as "run `compat-harness render --check`" must name a subcommand and options
    that exist, in the code's messages and in the templates of the docs."""
    import re

    from harness import cli
    from harness.report.records import REPO_ROOT

    sources = [*(REPO_ROOT / "harness").rglob("*.py"), *(REPO_ROOT / "harness").rglob("*.j2")]
    hints = {tuple(m.group(1).split()) for path in sources
             for m in re.finditer(r"`compat-harness ([a-z][^`]*)`", path.read_text())}
    assert ("cells",) in hints and ("render", "--check") in hints
    subcommands = cli.build_parser()._subparsers._group_actions[0].choices
    for command, *options in hints:
        assert command in subcommands, command
        known = subcommands[command]._option_string_actions
        assert all(o in known for o in options if o.startswith("-")), (command, options)


def test_cells_command_matches_what_pytest_collects(capsys):
    """The same selection through `compat-harness cells` and through pytest: the same cells."""
    import subprocess
    import sys

    from harness import cli
    from harness.report.records import REPO_ROOT

    selection = ["--arch", "Qwen3MoeForCausalLM", "--tier", "tiny", "--method", "lora"]
    assert cli.main(["cells", *selection, "--json", "--no-pruned"]) == 0
    ids = {c["id"] for c in json.loads(capsys.readouterr().out)["cells"]}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--device", "cpu", *selection], cwd=REPO_ROOT, capture_output=True, text=True)
    items = {line.split("::")[1].removesuffix("[cpu]") for line in done.stdout.splitlines() if "::" in line}
    assert ids and ids == items


def test_cells_command_unknown_name_is_one_line_and_exit_2(capsys):
    from harness import cli

    assert cli.main(["cells", "--arch", "LlamaForCasualLM"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("ERROR: unknown architecture 'LlamaForCasualLM'; did you mean LlamaForCausalLM")


def test_nightly_sim_stops_on_a_wrong_name_before_any_shard_runs(tmp_path, capsys):
    from harness import cli

    workdir = tmp_path / "sim"
    assert cli.main(["nightly-sim", "--workdir", str(workdir), "--", "-m", "cpu", "--arch=Lama"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("ERROR: unknown architecture 'Lama'; did you mean")
    assert not workdir.exists()
