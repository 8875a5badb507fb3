"""The release bump's own decisions, without environments: the cell-by-cell diff (regressions, fixes,
limits that no longer hold for the candidate's releases), the limits it writes into a copy of the
matrix (added, narrowed: the copy still loads), torch's CPU-only candidates, and the selections the
Makefile prints. The end to end run (real environments, planted releases) is
tests/test_release_watch_e2e.py (COMPAT_HARNESS_ENV_TESTS=1).
"""

from __future__ import annotations

import difflib
import shutil

import pytest

from harness.run import selections
from harness.run.candidates import torch_candidate
from harness.run.cell_diff import compare, limit_holds
from harness.run.limit_edits import (
    add_limits,
    narrow_limit,
    narrowed_spec,
    regression_entry,
    set_release,
    short_release,
)
from harness.run.release_bump import Candidate, Step, parse_packages, plan_limits, watched_packages
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, REPO_ROOT

LLAMA = "LlamaForCausalLM"
NEWEST = {"transformers": "5.25.0", "peft": "0.21.2"}


def tp_lora_limit(matrix):
    """(index, limit): Llama's `lora` x `tp` limit that holds under the newest releases."""
    return next((i, lim) for i, lim in enumerate(matrix.architectures[LLAMA].known_limits)
                if lim.layout == "tp" and limit_holds(lim, NEWEST))


def record(
    cell: str,
    status: str,
    *,
    method="lora",
    layout="single",
    check="train",
    tier="tiny",
    category=None,
    message="",
    variant="default",
    stack="native",
) -> dict:
    return {
        "cell_id": cell,
        "architecture": LLAMA,
        "method": method,
        "layout": layout,
        "tier": tier,
        "check": check,
        "variant": variant,
        "stack": stack,
        "implementation": "default",
        "status": status,
        "category": category,
        "message": message,
        "source_file": "matrix/architectures.toml",
    }


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def test_the_diff_cell_by_cell(matrix):
    before = [
        record("a", "pass"),
        record("b", "fail", message="old bug"),
        record("c", "pass"),
        record("d", "pass"),
        record("gone", "pass"),
    ]
    after = [
        record("a", "fail", category="error", message="new bug"),
        record("b", "pass"),
        record("c", "pass"),
        record("d", "xfail", category="error"),
        record("new", "pass"),
    ]
    diff = compare(before, after, matrix, {"transformers": "5.25.0", "peft": "0.21.2"})
    assert [(c.cell_id, c.message) for c in diff.regressions] == [("a", "new bug")]
    assert [c.cell_id for c in diff.declared] == ["d"]  # pass -> xfail: a limit names it already
    assert [(c.cell_id, c.message) for c in diff.fixes] == [("b", "old bug")]
    assert (diff.cells, diff.unchanged, diff.new, diff.vanished) == (5, 1, ["new"], ["gone"])


def test_a_limit_is_stale_by_the_candidates_releases_not_the_installed_ones(matrix):
    # Llama's `lora` x `tp` limit that holds for transformers 5.25.0 with peft 0.21.2
    after = [
        record("tp-train", "pass", layout="tp"),
        record("tp-parity", "pass", layout="tp", check="parity"),
    ]
    _, limit = tp_lora_limit(matrix)
    stale = compare([], after, matrix, {"transformers": "5.25.0", "peft": "0.21.2"}).stale
    assert [(s.ref.architecture, s.ref.limit.layout, s.passing, s.retirable) for s in stale] == [
        (LLAMA, "tp", ["tp-parity", "tp-train"], True)
    ]
    # with peft 0.22.0 the limit's own range excludes the candidate: nothing is stale
    assert not compare([], after, matrix, {"transformers": "5.25.0", "peft": "0.22.0"}).stale
    # an earlier step narrowed it already: not stale again
    narrowed = {stale[0].ref.key: {"transformers": f"{limit.transformers},<5.25"}}
    assert not compare([], after, matrix, {"transformers": "5.25.0", "peft": "0.21.2"}, narrowed).stale
    # one of its cells still fails: it cannot simply be narrowed
    failing = [*after, record("tp-gen", "fail", layout="tp", check="generate", category="error")]
    (one,) = compare([], failing, matrix, {"transformers": "5.25.0", "peft": "0.21.2"}).stale
    assert not one.retirable and one.failing == ["tp-gen"]


def test_ranges_narrowed_to_exclude_the_new_release():
    assert short_release("5.25.0") == "5.25" and short_release("5.25.1") == "5.25.1"
    assert narrowed_spec(None, "5.25.0") == "<5.25"
    assert narrowed_spec(">=5.17", "5.25.0") == ">=5.17,<5.25"
    assert narrowed_spec("<=0.21.2", "0.21.3") == "<=0.21.2,<0.21.3"


def test_a_regression_becomes_a_limit_scoped_to_its_cell_and_range():
    rec = record(
        "x",
        "fail",
        method="sft",
        layout="fsdp2",
        check="parity",
        category="numerics",
        message="loss  drifted\n by 1e-2",
        variant="experts_eager",
    )
    entry = regression_entry(
        rec, "transformers", "5.25.0", "5.24.0", {"transformers": "5.24.0", "peft": "0.21.2"}
    )
    assert entry == {
        "category": "numerics",
        "method": "sft",
        "layout": "fsdp2",
        "check": "parity",
        "variant": "experts_eager",
        "transformers": ">=5.25.0",
        "peft": "==0.21.2",
        "reason": "release-bump: first bad transformers 5.25.0, last good 5.24.0, with peft 0.21.2: "
        "loss drifted by 1e-2",
    }
    accel = regression_entry(
        rec, "accelerate", "1.16.0", "1.15.0", {"transformers": "5.24.0", "peft": "0.21.2"}
    )
    assert (accel["transformers"], accel["peft"]) == ("==5.24.0", "==0.21.2")
    assert accel["reason"].startswith(
        "release-bump: first bad accelerate 1.16.0, last good 1.15.0, with transformers 5.24.0, peft 0.21.2: "
    )


def test_the_plan_adds_and_retires_limits(matrix):
    after = [
        record("tp-train", "pass", layout="tp"),
        record("single-train", "fail", category="error", message="boom"),
    ]
    before = [record("tp-train", "xfail", layout="tp", category="error"), record("single-train", "pass")]
    releases = {"transformers": "5.25.0", "peft": "0.21.2"}
    step = Step(
        Candidate("transformers", "5.24.0", "5.25.0"),
        {"transformers": "5.24.0", "peft": "0.21.2"},
        releases_after=releases,
    )
    step.diff = compare(before, after, matrix, releases)
    step.after = type("Run", (), {"records": after})()
    for change in step.diff.regressions:
        change.first_bad, change.last_good = "5.25.0", "5.24.0"
    narrowed: dict = {}
    plan_limits(step, narrowed)
    _, limit = tp_lora_limit(matrix)
    assert [a.entry["layout"] for a in step.added] == ["single"]
    assert [(r.package, r.before, r.after) for r in step.retired] == [
        ("transformers", limit.transformers, f"{limit.transformers},<5.25")
    ]
    assert list(narrowed.values()) == [{"transformers": f"{limit.transformers},<5.25"}]


def test_limit_edits_on_a_copy_of_the_matrix_keep_it_loadable(tmp_path, matrix):
    copy = tmp_path / "matrix"
    shutil.copytree(DEFAULT_MATRIX_DIR, copy)
    file = copy / "architectures.toml"
    index, limit = tp_lora_limit(matrix)
    narrow_limit(file, LLAMA, index, "transformers", ">=5.17,<5.25", limit.reason)
    entry = regression_entry(
        record("x", "fail", category="error", message="boom"),
        "transformers",
        "5.25.0",
        "5.24.0",
        {"transformers": "5.24.0", "peft": "0.21.2"},
    )
    add_limits(file, LLAMA, [entry])
    add_limits(file, "Qwen3ForCausalLM", [entry])
    set_release(copy / "releases.toml", "newest", "transformers", "5.25.0")
    set_release(copy / "releases.toml", "newest", "accelerate", "1.16.0")
    edited = load_matrix(copy)
    limits = edited.architectures[LLAMA].known_limits
    assert limits[index].transformers == ">=5.17,<5.25" and limits[index].reason == limit.reason
    assert limits[-1].reason.startswith("release-bump: first bad transformers 5.25.0")
    assert edited.release_sets["newest"].transformers == "5.25.0"
    assert edited.release_sets["newest"].also["accelerate"] == "1.16.0"
    text = (copy / "releases.toml").read_text()
    assert text.startswith("# The library releases users run together.")  # comments kept
    # the rest of the file is as it was: only the edited lines differ
    old = (DEFAULT_MATRIX_DIR / "architectures.toml").read_text().splitlines()
    new = file.read_text().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(old, new, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert len(changed) == 1 + 1 + 2, changed  # one limit narrowed (- +), one added to each row
    with pytest.raises(Exception, match="not the limit the bump measured"):
        narrow_limit(file, LLAMA, index, "peft", "<0.22", "another reason")
    with pytest.raises(Exception, match="holds no release of torch"):
        set_release(copy / "releases.toml", "newest", "torch", "2.14.0")


def test_torch_on_a_cpu_host_only_from_local_cpu_builds():
    # the index's newer torch is a CUDA build: reported, not watched
    found = torch_candidate("2.13.0", ["2.13.0+cpu"], "2.15.0", cuda=False)
    assert (
        found.newest is None
        and "torch 2.15.0 on the index is a CUDA build; not watched on a CPU host" in found.note
    )
    # a local +cpu wheel of a newer release is the candidate; a local CUDA-less plain wheel is not
    assert (
        torch_candidate("2.13.0", ["2.13.0+cpu", "2.14.0+cpu", "2.15.0"], "2.15.0", cuda=False).newest
        == "2.14.0+cpu"
    )
    assert torch_candidate("2.13.0", ["2.13.0+cpu"], "2.13.0", cuda=False).newest is None
    # a CUDA host takes the newest anywhere
    assert torch_candidate("2.13.0", [], "2.15.0", cuda=True).newest == "2.15.0"


def test_packages_in_order_and_unknown_ones_refused(matrix):
    newest = matrix.release_sets["newest"]
    assert watched_packages(newest) == ["transformers", "peft", "torch", "accelerate", "trl"]
    assert parse_packages("transformers==5.25.0,accelerate", newest) == [
        ("transformers", "5.25.0"),
        ("accelerate", None),
    ]
    with pytest.raises(ValueError, match="datasets is not watched"):
        parse_packages("datasets", newest)


def test_selections_are_read_from_the_makefile():
    assert selections.parse_lines("# c\nmatrix -m cpu --arch A\n\n--arch B --layout 'single'\n") == [
        ["matrix", "-m", "cpu", "--arch", "A"],
        ["matrix", "-m", "cpu", "--arch", "B", "--layout", "single"],
    ]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    found = selections.from_makefile()
    assert ["matrix", "-m", "cpu", "--tier", "tiny", "--layout", "single"] in found  # make matrix's
    assert any("--stack" in s and "trl" in s for s in found)  # the gates' TRL slice
    assert all(s[:3] == ["matrix", "-m", "cpu"] for s in found)
    assert (REPO_ROOT / "Makefile").is_file()
