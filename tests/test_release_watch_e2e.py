"""The release bump end to end, with planted releases in a local wheel directory.

A wheelhouse holds peft as installed here (0.21.2, the release the default set `newest` holds)
and a "0.21.3" built from the same files with one planted bug: `get_peft_model` raises. The bump
runs in a copy of this tree (its own git repository, so the proposal's branch and the matrix edits
touch nothing here), whose matrix carries one planted limit that no longer holds (a cell that
passes). It must show:

- the default environment is the lock's: the baseline's records ran peft 0.21.2 from
  locks/newest.txt (its digest in every record's env.lock), though the wheelhouse offers 0.21.3;
- `compat-harness release-bump --wheels` finds 0.21.3, makes the candidate lock, runs both locks,
  reports the cell-by-cell diff, adds a known limit for the planted regression (scoped to its cell
  and `peft = ">=0.21.3"`), narrows the planted stale limit to `peft = "<0.21.3"`, and commits lock,
  releases.toml, limits, records, docs and report on branch release-bump/peft-0.21.3;
- a second bump (report only) runs nothing again: every lock's records are kept by its digest.

It makes environments (minutes): run with COMPAT_HARNESS_ENV_TESTS=1 (`make release-watch-sim`;
`make unit` leaves it out to keep `make test` short).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import peft
import pytest

REPO = Path(__file__).resolve().parents[1]
PLANTED = 'raise RuntimeError("planted regression: get_peft_model is broken in this release")'

pytestmark = pytest.mark.skipif(
    os.environ.get("COMPAT_HARNESS_ENV_TESTS") != "1",
    reason="makes real environments (minutes): COMPAT_HARNESS_ENV_TESTS=1 runs it (make release-watch-sim)",
)


def build_wheel(out: Path, version: str, plant: bool) -> Path:
    """peft as installed here, as a wheel of `version` (with the planted bug when asked)."""
    package = Path(peft.__file__).parent
    info = next(package.parent.glob(f"peft-{peft.__version__}.dist-info"))
    wheel = out / f"peft-{version}-py3-none-any.whl"
    entries: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            data = path.read_bytes()
            if plant and path.name == "mapping_func.py":
                text = data.decode()
                head, sep, body = text.partition("def get_peft_model(")
                signature_end = body.index(":\n", body.index(")")) + 2
                data = (
                    head + sep + body[:signature_end] + f"    {PLANTED}\n" + body[signature_end:]
                ).encode()
            entries[f"peft/{path.relative_to(package).as_posix()}"] = data
    new_info = f"peft-{version}.dist-info"
    for name in ("METADATA", "WHEEL", "LICENSE", "top_level.txt"):
        source = info / name
        if source.is_file():
            data = source.read_text()
            if name == "METADATA":
                data = data.replace(f"Version: {peft.__version__}", f"Version: {version}", 1)
            entries[f"{new_info}/{name}"] = data.encode()
    records = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for name, data in entries.items()
    ]
    entries[f"{new_info}/RECORD"] = ("\n".join([*records, f"{new_info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return wheel


PLANTED_LIMIT = (
    '  { category = "error", method = "sft", layout = "single", check = "train", '
    'reason = "planted: a limit whose cell passes" },\n'
)


def copy_tree(dest: Path) -> Path:
    """This tree as it is (tracked and untracked files, no ignored ones) in a git repository of its own."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    # the planted stale limit: Llama's sft single-device train cell, which passes
    arch = dest / "matrix" / "architectures.toml"
    text = arch.read_text()
    head, sep, rest = text.partition("[architectures.LlamaForCausalLM]")
    marker = "known_limits = [\n"
    at = rest.index(marker) + len(marker)
    arch.write_text(head + sep + rest[:at] + PLANTED_LIMIT + rest[at:])
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy"],
    ):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def cli(*args: str, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=2400,
    )


SELECTION = (
    "--arch LlamaForCausalLM --layout single --tier tiny --check train --variant default --method sft,lora"
)


def test_release_bump_proposes_a_planted_release_with_its_limits(tmp_path):
    from harness.lockfile import digest

    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    build_wheel(wheels, peft.__version__, plant=False)
    build_wheel(wheels, "0.21.3", plant=True)
    tree = copy_tree(tmp_path / "tree")
    env = {**os.environ, "COMPAT_HARNESS_CACHE": str(tmp_path / "cache")}
    base_digest = digest(tree / "locks" / "newest.txt")
    args = [
        "release-bump",
        "--packages",
        "peft",
        "--wheels",
        str(wheels),
        "--selection",
        SELECTION,
        "--issue-body",
        str(tmp_path / "pr.md"),
    ]
    first = cli(*args, env=env, cwd=tree)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    branch = "release-bump/peft-0.21.3"
    assert f"proposal: branch {branch}" in first.stdout
    # the working tree of the copy is untouched: the proposal is on the branch
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
    assert status == ""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{branch}:{path}"], cwd=tree, capture_output=True, text=True, check=True
        ).stdout

    files = subprocess.run(
        ["git", "diff", "--name-only", "HEAD", branch], cwd=tree, capture_output=True, text=True
    ).stdout.split()
    records = [f for f in files if f.startswith("reports/records/")]
    assert len(records) == 2 and any("-release-bump-peft0.21.3-baseline-" in f for f in records)
    baseline = [json.loads(x) for x in show(next(f for f in records if "-baseline-" in f)).splitlines()]
    candidate = [json.loads(x) for x in show(next(f for f in records if "-candidate-" in f)).splitlines()]
    # (a) the default environment is the lock's: peft 0.21.2, whatever the wheelhouse offers
    assert {r["env"]["peft"] for r in baseline} == {peft.__version__}
    assert {r["env"]["lock"]["sha256"] for r in baseline} == {base_digest}
    (held,) = {r["env"]["transformers"] for r in baseline}  # the release the default set holds
    # the candidate ran the planted release (its peft.__version__ is the installed files': 0.21.2)
    lock = show("locks/newest.txt")
    assert "peft==0.21.3" in lock
    assert {r["env"]["lock"]["sha256"] for r in candidate} == {hashlib.sha256(lock.encode()).hexdigest()[:16]}
    assert any("planted regression" in r["message"] for r in candidate)
    assert 'peft = "0.21.3"' in show("matrix/releases.toml")
    # (b) the diff, the limit added for the regression, the planted stale limit narrowed
    arch = show("matrix/architectures.toml")
    assert (
        'reason = "planted: a limit whose cell passes", peft = "<0.21.3"' in arch
        or 'peft = "<0.21.3", reason = "planted: a limit whose cell passes"' in arch
    )
    assert (
        f'method = "lora", layout = "single", check = "train", transformers = "=={held}", peft = ">=0.21.3", '
        f'reason = "release-bump: first bad peft 0.21.3, last good 0.21.2, with transformers {held}: '
        "RuntimeError: planted regression"
    ) in arch
    report = next(f for f in files if f.startswith("reports/release-bump/"))
    text = show(report)
    assert "## peft 0.21.2 -> 0.21.3" in text and "1 regression(s)" in text
    assert (
        "| `LlamaForCausalLM-lora-single-tiny-train` | pass | **fail** [peft-unsupported] | 0.21.3 | 0.21.2 |"
        in text
    )
    assert "planted regression" in text
    assert (
        any(f.startswith("reports/") and f.endswith(".md") and "release-bump" not in f for f in files)
        or "reports/llm.md" in files
    )
    title = (tmp_path / "pr.md").read_text().splitlines()[0]
    assert title == "Release bump: peft 0.21.3 (1 regression(s), 1 limit(s) retired)"
    # the branch's matrix loads, and under it the candidate's cells are what it declares
    check = cli(
        "cells", "--arch", "LlamaForCausalLM", "--layout", "single", "--tier", "tiny", env=env, cwd=tree
    )
    assert check.returncode == 0
    # a second measurement (report only) runs nothing again
    second = cli(
        "release-watch",
        "--packages",
        "peft",
        "--wheels",
        str(wheels),
        "--selection",
        SELECTION,
        "--report",
        str(tmp_path / "again.md"),
        env=env,
        cwd=tree,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "making an environment" not in second.stdout and "running" not in second.stdout
    assert (
        "| `LlamaForCausalLM-lora-single-tiny-train` | pass | **fail**" in (tmp_path / "again.md").read_text()
    )
