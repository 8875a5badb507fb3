"""`compat-harness sweep` on its own decisions: which releases it runs, the slice it reads, the grid
it draws from records, what it resumes, and the release trees it checks against their RECORD.

The sweep's real runs (environments, cells under two transformers releases) are measured by hand
(README: compat-harness sweep); here only what needs no environment, with the real index's release
list as data, the committed records of the release bump, and a real wheel built with pip.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.run import overlays
from harness.run.bisect import read_records
from harness.run.sweep import (
    HostTrees,
    Paths,
    Session,
    SweepError,
    mismatch,
    parse_holds,
    select_releases,
    sweep,
    unswept,
)
from harness.run.sweep_grid import build_grid, compact, counts, mark, markdown, verdict
from harness.run.sweep_slice import SLICES_FILE, SliceError, load_slice, parse_slice
from harness.spec.load import load_matrix
from harness.spec.matrix import REPO_ROOT

# `pip index versions transformers` on 2026-12-07, 5.x and the last 4.x releases (5.10.0 is not there:
# the 5.10 minor begins at 5.10.1), with a pre-release that a sweep never runs.
INDEX_LINE = ("5.25.0, 5.24.0, 5.23.0, 5.22.2, 5.22.1, 5.22.0, 5.21.1, 5.21.0, 5.20.2, 5.20.1, 5.20.0, "
              "5.19.0, 5.18.0, 5.17.0, 5.16.1, 5.16.0, 5.15.1, 5.15.0, 5.14.1, 5.14.0, 5.13.1, 5.13.0, "
              "5.12.1, 5.12.0, 5.11.0, 5.10.4, 5.10.2, 5.10.1, 5.9.0, 5.8.1, 5.8.0, 5.7.0, 5.6.2, 5.6.1, "
              "5.6.0, 5.5.4, 5.5.3, 5.5.2, 5.5.1, 5.5.0, 5.4.0, 5.3.0, 5.2.0, 5.1.0, 5.0.0, 5.0.0rc3, "
              "4.57.6, 4.57.5")
INDEX = [v.strip() for v in INDEX_LINE.split(",")]
BUMP_RECORDS = REPO_ROOT / "reports" / "records"
BASELINE = BUMP_RECORDS / "2026-12-07-release-bump-transformers5.25.0-baseline-4d67ac1.jsonl"
CANDIDATE = BUMP_RECORDS / "2026-12-07-release-bump-transformers5.25.0-candidate-4d67ac1.jsonl"


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- releases ------------------------------------------------------------------------------------

def test_a_range_is_every_final_release_between_inclusive():
    releases = select_releases(INDEX, start="5.0.0", end="5.25.0")
    assert releases[0] == "5.0.0" and releases[-1] == "5.25.0" and len(releases) == 45
    assert "5.0.0rc3" not in releases and "4.57.6" not in releases
    assert select_releases(INDEX, start="5.20.0", end="5.21.1") == ["5.20.0", "5.20.1", "5.20.2", "5.21.0",
                                                                   "5.21.1"]


def test_the_summary_names_the_final_releases_a_sampled_sweep_left_out():
    minors = select_releases(INDEX, start="5.20.0", end="5.22.0", minors_only=True)
    assert unswept(INDEX, minors) == ["5.20.1", "5.20.2", "5.21.1"]
    assert unswept(INDEX, select_releases(INDEX, start="5.20.0", end="5.22.0")) == []
    assert unswept([], minors) is None  # no index: not known, so nothing is claimed


def test_minors_only_is_the_first_final_release_of_each_minor():
    releases = select_releases(INDEX, start="5.0.0", end="5.25.0", minors_only=True)
    assert len(releases) == 26
    assert "5.10.1" in releases and "5.10.2" not in releases  # no 5.10.0 on the index
    assert all(r.endswith(".0") for r in releases if not r.startswith("5.10."))


def test_named_releases_must_be_on_the_index():
    assert select_releases(INDEX, explicit=["5.25.0", "5.3.0"]) == ["5.3.0", "5.25.0"]
    with pytest.raises(SweepError, match=r"--releases 5\.10\.0: not a release on the index .*5\.10\.1"):
        select_releases(INDEX, explicit=["5.10.0"])
    with pytest.raises(SweepError, match="not a final release"):
        select_releases(INDEX, explicit=["5.0.0rc3"])
    with pytest.raises(SweepError, match="no final release from 6.0.0"):
        select_releases(INDEX, start="6.0.0")


def test_a_sweep_needs_a_range_or_named_releases(capsys):
    from harness.cli import main

    assert main(["sweep", "transformers", "--hold", "peft==0.21.2"]) == 2
    assert "give the range (--from RELEASE [--to RELEASE]) or --releases" in capsys.readouterr().err


def test_holds_are_package_equals_release():
    assert parse_holds(["peft==0.21.2", "Accelerate==1.16.0,trl==1.16.0"]) == {
        "peft": "0.21.2", "accelerate": "1.16.0", "trl": "1.16.0"}
    with pytest.raises(SweepError, match="write PACKAGE==RELEASE"):
        parse_holds(["peft=0.21.2"])


# --- the slice -----------------------------------------------------------------------------------

def test_the_release_slice_is_valid_pytest_selection_of_the_matrix():
    found = load_slice("release", SLICES_FILE, load_matrix())
    assert found.selection[:3] == ["matrix", "-m", "cpu"]
    assert "--variant" not in found.selection  # every documented call and experts kernel
    words = dict(zip(found.selection[3::2], found.selection[4::2], strict=True))
    assert words["--layout"] == "single,fsdp2,tp,fsdp2_tp,ep" and words["--check"] == "train,parity"
    assert len(words["--arch"].split(",")) == 4
    narrowed = found.narrowed({"arch": ["LlamaForCausalLM"], "layout": ["single", "tp"], "check": []})
    assert "--arch LlamaForCausalLM --method sft,lora --layout single,tp" in " ".join(narrowed.selection)


@pytest.mark.parametrize(("table", "message"), [
    ('[slices.release]\narchs = ["LlamaForCausalLM"]',
     r"slices\.release\.archs = .*unknown key; use one of arch, method"),
    ('[slices.release]\narch = "LlamaForCausalLM"\nlayout = []',
     r"slices\.release\.layout = \[\]: not a list of names; write a non-empty list"),
    ('[slices.release]\nmarker = "tpu"',
     r"slices\.release\.marker = 'tpu': unknown device marker; write one of cpu"),
    ('[slices.other]\narch = ["LlamaForCausalLM"]',
     r"slices = \['other'\]: no slice 'release'; pick one of other"),
])
def test_a_wrong_slice_names_the_file_the_key_and_the_fix(tmp_path, table, message):
    path = tmp_path / "slices.toml"
    path.write_text(table)
    with pytest.raises(SliceError, match=message) as info:
        load_slice("release", path)
    assert str(info.value).startswith(str(path))


def test_a_name_the_matrix_does_not_declare_is_caught_before_anything_runs(tmp_path):
    path = tmp_path / "slices.toml"
    path.write_text('[slices.release]\narch = ["LlamaForCausalLM", "Qwen3MoEForCausalLM"]\n')
    wanted = (r"slices\.release\.arch = .*unknown architecture 'Qwen3MoEForCausalLM'; "
              r"did you mean Qwen3MoeForCausalLM.*fix the name")
    with pytest.raises(SliceError, match=wanted):
        load_slice("release", path, load_matrix())
    assert parse_slice({"slices": {"release": {"arch": "LlamaForCausalLM"}}}, "release").options == {
        "arch": ["LlamaForCausalLM"]}


# --- the grid ------------------------------------------------------------------------------------

def test_the_grid_of_real_records_shows_what_changed_between_two_releases():
    before, after = records_of(BASELINE), records_of(CANDIDATE)
    assert {r["env"]["transformers"] for r in before} == {"5.24.0"}
    grid = build_grid({"5.24.0": before, "5.25.0": after}, ["5.24.0", "5.25.0"])
    changed = grid.changed_releases()
    assert list(changed) == ["5.25.0"]
    flipped = {line.split(": ")[0]: line.split(": ", 1)[1] for line in changed["5.25.0"]}
    expected = {r["cell_id"] for r in after} - set()
    old = {r["cell_id"]: mark(r) for r in before}
    new = {r["cell_id"]: mark(r) for r in after}
    assert set(flipped) == {c for c in expected | set(old)
                            if verdict(old.get(c, "-")) != verdict(new.get(c, "-"))}
    assert any(v.startswith("x:") and v.endswith(" -> P") for v in flipped.values())  # limits now passing
    assert counts(after) == {"fail": 2, "pass": 480, "skip": 138, "xfail": 24}
    lines = compact(grid)
    assert lines[0].startswith("| cell") and len(lines) == len(flipped) + 3
    assert "row(s) the same in every release" in lines[-1]
    text = markdown(grid, "t")
    assert text.count("\n| ") == len(grid.cells) + 1  # every row, and the header


def test_a_fail_that_a_later_commit_declared_is_not_a_change_of_the_stack():
    failed = {"cell_id": "c", "status": "fail", "category": "error"}
    declared = {**failed, "status": "xfail"}
    grid = build_grid({"5.5.0": [failed], "5.5.1": [declared], "5.6.0": [{**failed, "category": "numerics"}]},
                      ["5.5.0", "5.5.1", "5.6.0"])
    assert grid.row("c") == ["F:error", "x:error", "F:numerics"]
    assert grid.changed_releases() == {"5.6.0": ["c: x:error -> F:numerics"]}


def test_a_release_without_a_verdict_is_a_column_of_marks_never_a_change():
    before, after = records_of(BASELINE), records_of(CANDIDATE)
    grid = build_grid({"5.24.0": before, "5.25.0": after}, ["5.24.0", "5.24.1", "5.25.0"], {"5.24.1"})
    assert list(grid.changed_releases()) == ["5.25.0"]  # compared with 5.24.0, the last with a verdict
    assert grid.row(before[0]["cell_id"])[1] == "!"


# --- resuming and harness failures --------------------------------------------------------------

class ThisInterpreter:
    """The sweep's session seam with this test's own interpreter (no environment made)."""

    def __init__(self):
        self.asked: list[str] = []

    def session(self, version: str) -> Session:
        self.asked.append(version)
        if version == "5.0.0":
            raise overlays.TreeError("no tree of transformers 5.0.0")
        return Session(sys.executable, {}, "this interpreter")


def test_finished_releases_are_kept_and_a_failing_session_is_no_verdict(tmp_path, capsys):
    finished = Paths(tmp_path, "transformers", "5.24.0")
    finished.records.write_bytes(gzip.compress(BASELINE.read_bytes()))  # as a sweep leaves it
    left = Paths(tmp_path, "transformers", "5.25.0")
    left.partial.write_text(CANDIDATE.read_text().splitlines()[0] + "\n")  # what a killed session left
    sessions = ThisInterpreter()
    # 5.25.0 runs a real pytest whose selection names no row of the matrix: exit 4, no verdict.
    result = sweep("transformers", ["5.0.0", "5.24.0", "5.25.0"], held={}, out=tmp_path, sessions=sessions,
                   selection=["matrix", "-m", "cpu", "--arch", "NoSuchForCausalLM"], slice_name="t")
    assert sessions.asked == ["5.0.0", "5.25.0"]  # 5.24.0 finished by an earlier sweep
    out = capsys.readouterr().out
    assert "transformers 5.24.0: finished by an earlier sweep" in out and "skipped" in out
    assert "transformers 5.25.0: HARNESS FAILURE" in out and "pytest exited 4" in out
    assert result.harness_failures == ["5.0.0", "5.25.0"]
    assert not left.records.exists() and not left.partial.exists()  # never a finished release
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["harness_failures"] == ["5.0.0", "5.25.0"]
    assert [r["state"] for r in summary["runs"]] == ["harness-failure", "kept", "harness-failure"]
    assert summary["runs"][1]["counts"] == counts(records_of(BASELINE)) and summary["changed"] == {}
    assert "(no verdict)" in (tmp_path / "grid.md").read_text()


def test_records_of_another_release_are_no_verdict_of_this_one():
    records = records_of(BASELINE)[:3]
    assert mismatch(records, {"transformers": "5.24.0", "peft": "0.21.2"}) == ""
    assert mismatch(records, {"transformers": "5.25.0"}) == "the records ran transformers 5.24.0, not 5.25.0"
    assert mismatch(records, {"transformers": "5.24.0", "tokenizers": "0.23.2"}) == ""  # not in `env`


# --- release trees -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A real wheel of a throwaway package, built by pip (offline, no build isolation)."""
    src = tmp_path_factory.mktemp("src")
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "sweep-probe"
        version = "1.2.0"
        dependencies = ["sweep-dep>=0.1,<0.2", "packaging>=20", "sweep-absent; extra == 'never'"]
        [project.scripts]
        sweep-probe = "sweep_probe:main"
    """))
    (src / "sweep_probe").mkdir()
    (src / "sweep_probe" / "__init__.py").write_text("def main():\n    return 'released'\n")
    dep = tmp_path_factory.mktemp("dep")
    (dep / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "sweep-dep"
        version = "0.1.0"
    """))
    (dep / "sweep_dep").mkdir()
    (dep / "sweep_dep" / "__init__.py").write_text("")
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src), str(dep)], check=True, capture_output=True)
    return next(out.glob("sweep_probe-1.2.0-*.whl"))


def test_a_tree_made_from_a_wheel_verifies_and_is_found_by_its_release(tmp_path, wheel):
    (made,) = overlays.make_trees(wheel.parent, tmp_path, ["sweep-probe"])
    assert made.path == tmp_path / "sweep-probe-1.2.0" and made.version == "1.2.0" and made.files >= 3
    assert (made.path / "sweep_probe" / "__init__.py").is_file()
    assert overlays.overlay_versions(tmp_path, "sweep_probe") == ["1.2.0"]
    again = overlays.make_trees(wheel.parent, tmp_path, ["sweep-probe"])  # kept, verified again
    assert again[0].files == made.files


def test_a_tree_that_differs_from_its_record_names_the_file(tmp_path, wheel):
    (made,) = overlays.make_trees(wheel.parent, tmp_path, ["sweep-probe"])
    module = made.path / "sweep_probe" / "__init__.py"
    module.write_text("def main():\n    return 'patched'\n")
    with pytest.raises(overlays.TreeError, match=r"sweep_probe/__init__.py differs from .*RECORD"):
        overlays.verify_tree(made.path)
    module.unlink()
    with pytest.raises(overlays.TreeError, match=r"sweep_probe/__init__.py is listed in RECORD but missing"):
        overlays.verify_tree(made.path)
    with pytest.raises(overlays.TreeError, match="is sweep_probe 1.2.0, not 1.3.0"):
        overlays.verify_tree(made.path, "sweep-probe", "1.3.0")


def test_a_module_the_record_does_not_list_is_caught(tmp_path, wheel):
    (made,) = overlays.make_trees(wheel.parent, tmp_path, ["sweep-probe"])
    (made.path / "sweep_probe" / "__pycache__").mkdir(exist_ok=True)
    (made.path / "sweep_probe" / "__pycache__" / "x.cpython-312.pyc").write_bytes(b"")  # the host's bytecode
    overlays.verify_tree(made.path)
    (made.path / "sweep_probe" / "extra.py").write_text("")
    with pytest.raises(overlays.TreeError, match="extra.py is not listed in .*RECORD"):
        overlays.verify_tree(made.path)


def test_trees_travel_in_one_archive_and_are_verified_where_they_land(tmp_path, wheel):
    (made,) = overlays.make_trees(wheel.parent, tmp_path / "here", ["sweep-probe"])
    trees = overlays.tree_dirs(tmp_path / "here", ["sweep-probe"])
    archive = overlays.pack_trees(trees, tmp_path / "t.tar.xz")
    (landed,) = overlays.unpack_trees(archive, tmp_path / "host")
    assert landed.path == tmp_path / "host" / "sweep-probe-1.2.0" and landed.files == made.files
    assert (landed.path / "sweep_probe" / "__init__.py").read_text() == "def main():\n    return 'released'\n"


def test_a_release_runs_with_a_tree_of_each_requirement_the_host_does_not_meet(tmp_path, wheel):
    overlays.make_trees(wheel.parent, tmp_path, ["sweep-probe"])
    unmet = r"sweep-probe 1.2.0 requires sweep-dep<0.2,>=0.1 \(the host has none\), and .* has no tree"
    with pytest.raises(overlays.TreeError, match=unmet):
        HostTrees(tmp_path, "sweep-probe", {}).overlay("1.2.0")
    overlays.make_trees(wheel.parent, tmp_path, ["sweep-dep"])
    session = HostTrees(tmp_path, "sweep-probe", {}).session("1.2.0")
    paths = session.env["PYTHONPATH"].split(os.pathsep)
    # the host's packaging fits; the extra's requirement does not apply
    assert paths[:2] == [str(tmp_path / "sweep-probe-1.2.0"), str(tmp_path / "sweep-dep-0.1.0")]
    assert paths[2] == str(REPO_ROOT)


def test_a_release_with_a_verdict_keeps_its_records_gzipped_and_a_rerun_reads_them(tmp_path, capsys):
    """One real single-device cell under the installed transformers: its records end as
    transformers-VERSION.jsonl.gz (no partial left), and the next sweep keeps them as they are."""
    version = importlib.metadata.version("transformers")
    selection = ["matrix", "-m", "cpu", "--arch", "LlamaForCausalLM", "--method", "sft", "--layout", "single",
                 "--tier", "tiny", "--check", "train"]
    args = dict(held={}, out=tmp_path, selection=selection, slice_name="t")
    first = sweep("transformers", [version], sessions=ThisInterpreter(), **args)
    done = Paths(tmp_path, "transformers", version)
    assert done.records.name == f"transformers-{version}.jsonl.gz" and not done.partial.exists()
    records = read_records(done.records)
    assert [r["status"] for r in records] == ["pass"] and first.harness_failures == []
    again = ThisInterpreter()
    sweep("transformers", [version], sessions=again, **args)
    assert again.asked == [] and "finished by an earlier sweep" in capsys.readouterr().out
