"""`compat-harness limits --check` and `which` on small record files written here.

The records are made by the harness's own `make_record` (the same keys, env and schema as a run
writes); the releases in them are the ones a test sets, so each test says what evidence it plants.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from harness.cli import main
from harness.report.limits import check_limits, load_evidence, narrowest
from harness.report.records import make_record
from harness.report.which import Question, answer
from harness.spec.load import load_matrix
from tests.conftest import LLAMA_ROW, write_rows


def cell(arch: str = "LlamaForCausalLM", method: str = "lora", layout: str = "tp", check: str = "train"):
    ident = f"{arch}-{method}-{layout}-tiny-{check}"
    return SimpleNamespace(
        id=ident,
        architecture=arch,
        method=method,
        layout=layout,
        tier="tiny",
        check=check,
        shape="",
        variant="",
        stack="native",
        implementation="",
    )


def record(
    status: str,
    transformers: str,
    peft: str = "0.21.2",
    torch: str = "2.13.0+cpu",
    check: str = "train",
    category: str | None = "error",
    stamp: str = "2026-12-07T00:00:00+00:00",
    device: str = "cpu",
) -> dict:
    env = {
        "python": "3.12.3",
        "torch": torch,
        "transformers": transformers,
        "peft": peft,
        "device_type": device,
        "device_name": "cpu (x86_64, 2 cores)",
        "device_count": 1,
        "world_size": 2,
        "backend": "gloo",
        "platform": "linux-x86_64",
        "lock": None,
    }
    rec = make_record(
        cell(check=check),
        status,
        category=None if status == "pass" else category,
        message="" if status == "pass" else "rank 0: RuntimeError: shape '[64, 16]' is invalid",
        env=env,
        run_id=f"run-{transformers}-{peft}-{torch}",
    )
    rec["timestamp"] = stamp
    return rec


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def matrix_with(matrix_dir: Path, limits: str):
    write_rows(matrix_dir, LLAMA_ROW + f"known_limits = [\n{limits}\n]\n")
    return load_matrix(matrix_dir)


LORA_TP = (
    '  {{ category = "error", method = "lora", layout = "tp", {spec}, reason = "peft sizes TP adapters" }}'
)
# What the committed evidence plus a sweep look like for LoRA under tp: peft 0.21.0 fails from 5.17,
# peft 0.21.2 passes up to 5.20.2 and fails from 5.21.0.
SWEPT = [
    record("fail", "5.17.0", peft="0.21.0", torch="2.11.0+cu130", category="error"),
    *(record("pass", v) for v in ("5.15.0", "5.17.0", "5.20.2")),
    *(record("xfail", v) for v in ("5.21.0", "5.24.0", "5.25.0")),
]


def test_a_planted_too_wide_limit_fails_with_the_specifiers_to_write(tmp_path, matrix_dir, capsys):
    matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.17", peft = "<=0.21.2"'))
    records = write(tmp_path / "records" / "run.jsonl", SWEPT)
    rc = main(
        [
            "limits",
            "--check",
            "--matrix",
            str(matrix_dir),
            "--records",
            str(records),
            "--bisects",
            str(tmp_path / "none"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert (
        "TOO WIDE" in out and "LlamaForCausalLM-lora-tp-tiny-train on transformers 5.17.0 (peft 0.21.2" in out
    )
    assert 'transformers = ">=5.17.0", peft = "==0.21.0"' in out
    assert 'transformers = ">=5.21.0", peft = "==0.21.2"' in out
    assert "remove that known_limits entry" not in out


def test_the_advice_leaves_out_failures_another_limit_declares(tmp_path, matrix_dir):
    """A layout-wide limit (5.15.0-5.16.0 broke the call) that a patch release fixed: its advice is the
    narrower range, not one that also swallows the LoRA limit's failures of later releases."""
    broad = ('  { category = "error", layout = "tp", transformers = ">=5.15.0,<5.17.0", '
             'reason = "call dropped" },')
    matrix = matrix_with(matrix_dir, "\n".join([
        broad, LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"')]))
    planted = [*(record("fail", v) for v in ("5.15.0", "5.16.0", "5.21.0", "5.24.0")),
               *(record("pass", v) for v in ("5.16.1", "5.20.2"))]
    report = check_limits(matrix, load_evidence([write(tmp_path / "r.jsonl", planted)], bisects=None))
    [wide] = report.too_wide
    assert wide.limit.transformers == ">=5.15.0,<5.17.0"
    assert [entry.toml for entry in wide.suggestion] == [
        'transformers = ">=5.15.0,<5.16.1", peft = "==0.21.2"']
    assert not wide.conflicts


def test_the_narrowed_limits_are_green(tmp_path, matrix_dir, capsys):
    matrix_with(
        matrix_dir,
        "\n".join(
            [
                LORA_TP.format(spec='transformers = ">=5.17.0", peft = "==0.21.0"') + ",",
                LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"'),
            ]
        ),
    )
    records = write(tmp_path / "records" / "run.jsonl", SWEPT)
    assert (
        main(
            [
                "limits",
                "--check",
                "--matrix",
                str(matrix_dir),
                "--records",
                str(records),
                "--bisects",
                str(tmp_path / "none"),
            ]
        )
        == 0
    )
    assert "0 cover a measured pass, 0 undeclared" in capsys.readouterr().out


def test_a_failure_outside_the_limit_is_undeclared(tmp_path, matrix_dir):
    matrix = matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.24.0", peft = "==0.21.2"'))
    evidence = load_evidence([write(tmp_path / "r.jsonl", SWEPT)], bisects=None)
    report = check_limits(matrix, evidence)
    assert not report.too_wide
    assert sorted((o.transformers, o.peft) for o in report.undeclared) == [
        ("5.17.0", "0.21.0"),
        ("5.21.0", "0.21.2"),
    ]


def test_latest_run_wins_per_cell_and_releases(tmp_path, matrix_dir):
    """A rerun on the same releases replaces the older verdict; another torch build is its own evidence."""
    matrix = matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.24.0", peft = "==0.21.2"'))
    old = record("pass", "5.24.0", stamp="2026-12-01T00:00:00+00:00")
    new = record("xfail", "5.24.0", stamp="2026-12-07T00:00:00+00:00")
    report = check_limits(matrix, load_evidence([write(tmp_path / "r.jsonl", [new, old])], bisects=None))
    assert report.ok
    other_torch = record("pass", "5.24.0", torch="2.11.0+cu130")
    report = check_limits(
        matrix, load_evidence([write(tmp_path / "s.jsonl", [new, other_torch])], bisects=None)
    )
    assert [o.torch for o in report.too_wide[0].covered_passes] == ["2.11.0+cu130"]
    assert any("failed and passed" in c for c in report.too_wide[0].conflicts)


def test_sweep_records_and_bisect_probes_are_evidence(tmp_path, matrix_dir):
    """reports/sweeps/<name>/<package>-<version>.jsonl and a finding's probed releases count."""
    from harness.report.limits import evidence_files

    matrix = matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.24.0", peft = "==0.21.2"'))
    records_dir, sweeps = tmp_path / "records", tmp_path / "sweeps"
    write(records_dir / "run.jsonl", [record("xfail", "5.24.0")])
    write(sweeps / "tf" / "transformers-5.22.0.jsonl", [record("fail", "5.22.0")])
    bisects = tmp_path / "bisects"
    bisects.mkdir()
    (bisects / "f.json").write_text(
        json.dumps(
            {
                "package": "transformers",
                "first_bad": "5.21.0",
                "last_good": "5.20.2",
                "cells": ["LlamaForCausalLM-lora-tp-tiny-train"],
                "held": {"peft": "0.21.2"},
                "runs": 2,
                "seconds": 1.0,
                "probed": {"5.20.2": "good", "5.21.0": "bad"},
                "message": "shape invalid",
            }
        )
    )
    files = evidence_files(records_dir, sweeps)
    assert [p.name for p in files] == ["run.jsonl", "transformers-5.22.0.jsonl"]
    item = check_limits(matrix, load_evidence(files, bisects)).limits[0]
    entries, _ = narrowest(item.failures, item.passes)
    assert [e.toml for e in entries] == ['transformers = ">=5.21.0", peft = "==0.21.2"']


def test_a_fix_bounds_the_range():
    """Failures up to a release that passes again: `>=first,<fixed`."""
    from harness.report.limits import observation

    obs = [
        observation(record(s, v), "x")
        for s, v in (("fail", "5.17.0"), ("fail", "5.24.0"), ("pass", "5.25.0"))
    ]
    entries, conflicts = narrowest([o for o in obs if o.failed], [o for o in obs if not o.failed])
    assert [e.toml for e in entries] == [
        'transformers = ">=5.17.0,<5.25.0", peft = "==0.21.2"'
    ] and not conflicts


def test_which_answers_a_measured_set_and_brackets_an_unmeasured_one(tmp_path, matrix_dir):
    matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"'))
    evidence = load_evidence([write(tmp_path / "r.jsonl", SWEPT)], bisects=None)
    measured = answer(
        Question("LlamaForCausalLM", {"transformers": "5.20.2", "peft": "0.21.2"}, "lora", "tp"), evidence, []
    )
    assert "measured." in measured and "lora · tp: ✓ pass, 1/1 cells pass" in measured
    between = answer(
        Question("LlamaForCausalLM", {"transformers": "5.23.0", "peft": "0.21.2"}, "lora", "tp"), evidence, []
    )
    assert "not measured" in between
    assert (
        "below: transformers 5.21.0, peft 0.21.2" in between
        and "above: transformers 5.24.0, peft 0.21.2" in between
    )
    # peft 0.21.0 is its own line: 5.17 failed there, whatever peft 0.21.2 did
    other = answer(Question("LlamaForCausalLM", {"transformers": "5.17.0", "peft": "0.21.0"}), evidence, [])
    assert "✗ fail (error)" in other and "peft 0.21.2" not in other


def test_which_holds_an_asked_torch_build_fixed_for_the_nearest_sets(tmp_path, matrix_dir):
    """A question naming torch gets the nearest sets on that torch build, as it does for peft: a pass
    on another torch between them is not an answer for this one. A build no record ran is said."""
    matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"'))
    other_torch = record("pass", "5.22.0", torch="2.11.0+cu130")
    evidence = load_evidence([write(tmp_path / "r.jsonl", [*SWEPT, other_torch])], bisects=None)
    asked = {"transformers": "5.23.0", "peft": "0.21.2"}
    on_cpu_torch = answer(Question("LlamaForCausalLM", {**asked, "torch": "2.13.0+cpu"}, "lora", "tp"),
                          evidence, [])
    assert "below: transformers 5.21.0, peft 0.21.2, torch 2.13.0+cpu" in on_cpu_torch
    assert "2.11.0+cu130" not in on_cpu_torch
    unrun = answer(Question("LlamaForCausalLM", {**asked, "torch": "2.15.0+cpu"}, "lora", "tp"), evidence, [])
    assert "no record of this row ran torch 2.15.0+cpu; measured with torch 2.11.0+cu130, 2.13.0+cpu" in unrun
    assert "below: transformers 5.22.0, peft 0.21.2, torch 2.11.0+cu130" in unrun


def test_which_takes_each_release_in_its_own_with(tmp_path, matrix_dir, capsys):
    """`--with transformers==X --with peft==Y` asks about both (the later --with does not replace the
    earlier one), as `--with transformers==X peft==Y` does."""
    matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"'))
    records = write(tmp_path / "records" / "run.jsonl", SWEPT)
    common = ["which", "--arch", "LlamaForCausalLM", "--method", "lora", "--layout", "tp", "--matrix",
              str(matrix_dir), "--records", str(records), "--bisects", str(tmp_path / "none")]
    for asked in (["--with", "transformers==5.20.2", "--with", "peft==0.21.2"],
                  ["--with", "transformers==5.20.2", "peft==0.21.2"]):
        assert main([*common, *asked]) == 0
        assert "on transformers 5.20.2, peft 0.21.2: measured." in capsys.readouterr().out


def test_a_stale_limit_is_told_the_narrower_entries_while_other_releases_fail(tmp_path, matrix_dir):
    """The pytest failure of a cell passing under a limit (runner + plugin) names the entries to write,
    never "remove the entry" while other releases still fail."""
    from harness.report.limits import stale_advice

    matrix = matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.17", peft = "<=0.21.2"'))
    records = write(tmp_path / "r.jsonl", [r for r in SWEPT if r["status"] != "pass"])
    advice = stale_advice(matrix, "LlamaForCausalLM", 0, record("pass", "5.20.2"), [records], None)
    assert 'transformers = ">=5.21.0", peft = "==0.21.2"' in advice
    assert 'transformers = ">=5.17.0", peft = "==0.21.0"' in advice
    assert "remove" not in advice
    nothing_fails = stale_advice(matrix, "LlamaForCausalLM", 0, record("pass", "5.20.2"), [], None)
    assert "remove that known_limits entry" in nothing_fails


def test_a_sweeps_grid_is_on_the_family_page_and_its_full_range_in_llm_md(tmp_path, matrix_dir):
    """reports/sweeps/NAME: cells x releases of the swept package on the family page, the others held;
    llm.md says every release in between ran. A record of another torch is left out of the grid."""
    from harness.report.render import render_docs
    from harness.report.results import load_results
    from harness.report.sweeps import load_sweeps

    matrix = matrix_with(matrix_dir, LORA_TP.format(spec='transformers = ">=5.21.0", peft = "==0.21.2"'))
    sweep = tmp_path / "sweeps" / "tf-lora-tp"
    releases = ["5.20.2", "5.21.0", "5.22.0"]
    for version, status in zip(releases, ("pass", "xfail", "xfail"), strict=True):
        write(sweep / f"transformers-{version}.jsonl", [record(status, version)])
    write(sweep / "transformers-5.22.0-other-torch.jsonl", [record("pass", "5.22.0", torch="2.11.0+cu130")])
    summary = {"package": "transformers", "held": {"peft": "0.21.2"}, "releases": releases}
    (sweep / "sweep.json").write_text(json.dumps({**summary, "unswept": []}))
    sweeps = load_sweeps(tmp_path / "sweeps")
    docs = render_docs(matrix, load_results(sorted(sweep.glob("*.jsonl"))), sweeps=sweeps)
    page = docs["models/llama.md"]
    assert "### Sweep `tf-lora-tp`: transformers releases, peft 0.21.2, torch 2.13.0+cpu, cpu" in page
    assert "Every transformers release from 5.20.2 to 5.22.0 ran" in page
    assert "| cell | 5.20.2 | 5.21 | 5.22 |" in page
    assert "| `LlamaForCausalLM-lora-tp-tiny-train` | ✓ | ✗ error | ✗ error |" in page
    assert "every transformers release 5.20.2–5.22.0 ran (sweep tf-lora-tp" in docs["llm.md"]
    # a sampled range (5.21.1 left out) claims only what ran
    (sweep / "sweep.json").write_text(json.dumps({**summary, "unswept": ["5.21.1"]}))
    sampled = render_docs(matrix, load_results(sorted(sweep.glob("*.jsonl"))),
                          sweeps=load_sweeps(tmp_path / "sweeps"))
    assert "Final releases of the range that the sweep left out: 5.21.1." in sampled["models/llama.md"]
    assert "every transformers release" not in sampled["llm.md"]
    without = render_docs(matrix, load_results(sorted(sweep.glob("*.jsonl"))))
    assert "Sweep" not in without["models/llama.md"]  # no sweep given: the page says nothing of one
