"""The bisect and the release watch, on their own decisions: which releases lie between, where a
binary search with untestable releases lands, what a failure follows, what a run's records say.

The end-to-end runs (real environments, real cells) are tests/test_release_watch_e2e.py (opt-in:
COMPAT_HARNESS_ENV_TESTS=1, minutes, run by `make release-watch-sim`); the release bump's own decisions are
tests/test_release_bump.py.
"""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.run import bisect as bisect_module
from harness.run.bisect import BAD, GOOD, UNTESTABLE, follows, index_versions, releases_between, verdict_of
from harness.run.envs import Pins, find_links


def wheel_dir(tmp_path, names: list[str]):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_releases_come_from_a_wheel_directory_in_release_order(tmp_path):
    wheels = wheel_dir(tmp_path, ["peft-0.21.2-py3-none-any.whl", "peft-0.21.10-py3-none-any.whl",
                                  "peft-0.22.0rc1-py3-none-any.whl", "peft-0.9.0-py3-none-any.whl",
                                  "transformers-5.18.0-py3-none-any.whl"])
    assert index_versions("peft", wheels) == ["0.9.0", "0.21.2", "0.21.10"]  # no pre-release
    assert releases_between("peft", "0.9.0", "0.21.10", wheels) == ["0.9.0", "0.21.2", "0.21.10"]
    with pytest.raises(bisect_module.BisectError, match="must come before"):
        releases_between("peft", "0.21.10", "0.9.0", wheels)


def test_verdicts_of_a_probe():
    assert verdict_of([{"status": "pass"}, {"status": "xfail"}]) == BAD  # a known limit is a failure
    assert verdict_of([{"status": "pass"}, {"status": "skip"}]) == GOOD
    assert verdict_of([{"status": "skip"}]) == UNTESTABLE
    assert verdict_of([]) == UNTESTABLE


def search(releases: list[str], verdicts: dict[str, str], monkeypatch) -> tuple[str, str, list[str]]:
    """Run the real binary search over planted probe verdicts; (last good, first bad, probed)."""
    probed = []

    def planted(pins, selection, **_):
        version = pins["transformers"]
        probed.append(version)
        record = {"status": {GOOD: "pass", BAD: "fail", UNTESTABLE: "skip"}[verdicts[version]],
                  "cell_id": "x", "message": "boom"}
        return bisect_module.Probe(pins, verdicts[version], [record], False, 0.0, bisect_module.Path("x"))

    monkeypatch.setattr(bisect_module, "probe", planted)
    monkeypatch.setattr(bisect_module, "releases_between", lambda *a: releases)
    result = bisect_module.bisect("transformers", releases[0], releases[-1], [], log=lambda _: None)
    return result.last_good, result.first_bad, probed


def test_the_search_finds_the_first_bad_release_in_few_probes(monkeypatch):
    releases = [f"5.{i}.0" for i in range(17, 33)]
    verdicts = {r: GOOD if int(r.split(".")[1]) < 26 else BAD for r in releases}
    good, bad, probed = search(releases, verdicts, monkeypatch)
    assert (good, bad) == ("5.25.0", "5.26.0")
    assert len(probed) <= 2 + 4  # the two ends, then log2(16)


def test_untestable_releases_are_stepped_around(monkeypatch):
    releases = ["1.0", "1.1", "1.2", "1.3", "1.4"]
    verdicts = {"1.0": GOOD, "1.1": GOOD, "1.2": UNTESTABLE, "1.3": BAD, "1.4": BAD}
    good, bad, _ = search(releases, verdicts, monkeypatch)
    assert (good, bad) == ("1.1", "1.3")  # 1.2 cannot tell: the answer spans it
    verdicts = {"1.0": GOOD, "1.1": UNTESTABLE, "1.2": UNTESTABLE, "1.3": UNTESTABLE, "1.4": BAD}
    assert search(releases, verdicts, monkeypatch)[:2] == ("1.0", "1.4")


def test_an_end_that_does_not_behave_as_given_is_an_error(monkeypatch):
    with pytest.raises(bisect_module.BisectError, match="not good as given"):
        search(["1.0", "1.1"], {"1.0": BAD, "1.1": BAD}, monkeypatch)


def test_what_the_failure_follows():
    grid = {("5.20", "0.19"): BAD, ("5.20", "0.21"): GOOD, ("5.21", "0.19"): BAD, ("5.21", "0.21"): GOOD}
    assert follows("transformers", "peft", "5.20", "5.21", ["0.19", "0.21"], grid).startswith(
        "the failure follows peft: it fails with peft 0.19 whatever transformers")
    grid = {("5.20", "0.19"): GOOD, ("5.20", "0.21"): GOOD, ("5.21", "0.19"): BAD, ("5.21", "0.21"): BAD}
    assert follows("transformers", "peft", "5.20", "5.21", ["0.19", "0.21"], grid).startswith(
        "the failure follows transformers")
    grid = {("5.20", "0.19"): GOOD, ("5.20", "0.21"): GOOD, ("5.21", "0.19"): GOOD, ("5.21", "0.21"): BAD}
    assert follows("transformers", "peft", "5.20", "5.21", ["0.19", "0.21"], grid).startswith(
        "the failure depends on both")


def test_environments_are_keyed_by_exact_releases(tmp_path, monkeypatch):
    a = Pins.of({"transformers": "5.20.0", "peft": "0.21.2"})
    assert a == Pins.of({"peft": "0.21.2", "Transformers": "5.20.0"})
    assert a.key("torch==2.13.0").startswith("peft-0.21.2_transformers-5.20.0_")
    assert a.key("torch==2.13.0") != a.key("torch==2.11.0")
    other = Pins.of({"transformers": "5.20.1", "peft": "0.21.2"})
    assert a.key("torch==2.13.0") != other.key("torch==2.13.0")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    assert find_links(tmp_path / "w", offline=True)[:3] == ["--no-index", "--find-links", str(tmp_path / "w")]
    assert "--no-index" not in find_links(None)


def test_bisect_refuses_a_selection_that_is_not_one_cell_and_names_unknown_cells(capsys):
    assert main(["bisect", "--good", "5.17.0", "--bad", "5.24.0"]) == 2
    assert "give one --cell ID" in capsys.readouterr().err
    assert main(["bisect", "--cell", "NoSuchCell-sft-single-tiny-train", "--good", "1", "--bad", "2"]) == 2
    assert "no runnable cell 'NoSuchCell-sft-single-tiny-train'" in capsys.readouterr().err


def test_kept_probe_records_are_read_back_without_running(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPAT_HARNESS_CACHE", str(tmp_path))
    selection = ["-m", "cpu", "--arch", "LlamaForCausalLM"]
    pins = {"transformers": "5.20.0", "peft": "0.21.2"}
    store = bisect_module.store_dir(selection)
    store.mkdir(parents=True)
    kept = store / f"{Pins.of(pins).key(bisect_module.torch_spec())}.jsonl"
    kept.write_text(json.dumps({"cell_id": "x", "status": "fail", "message": "kept"}) + "\n")

    def no_env(*_, **__):
        raise AssertionError("a kept probe must not make an environment")

    monkeypatch.setattr(bisect_module, "ensure_env", no_env)
    found = bisect_module.probe(pins, selection, log=lambda _: None)
    assert found.reused and found.verdict == BAD and found.example["message"] == "kept"
