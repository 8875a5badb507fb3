"""The release watch end to end, with a planted regression between two local wheel sets.

A wheelhouse holds peft as installed here (0.21.2, the release the "last nightly" ran) and a
"0.21.3" built from the same files with one planted bug: `get_peft_model` raises. The last
nightly's records are a real run of one LoRA cell here. `compat-harness release-watch --wheels`
must find 0.21.3 as new, run the cell under both releases in environments of their own, report
the pass -> fail with its first bad release, and write the issue the nightly opens; a second
watch runs nothing again (every probe's records are kept).

It makes two environments (uv, a minute or two): run with COMPAT_HARNESS_ENV_TESTS=1
(`make release-watch-sim` does; `make unit` leaves it out to keep `make test` short).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import peft
import pytest

REPO = Path(__file__).resolve().parents[1]
PLANTED = 'raise RuntimeError("planted regression: get_peft_model is broken in this release")'
CELL = [
    "--arch",
    "LlamaForCausalLM",
    "--method",
    "lora",
    "--layout",
    "single",
    "--tier",
    "tiny",
    "--check",
    "train",
    "--variant",
    "default",
]

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


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_a_planted_regression_is_found_bisected_and_reported(tmp_path):
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    build_wheel(wheels, peft.__version__, plant=False)
    build_wheel(wheels, "0.21.3", plant=True)
    env = {**os.environ, "COMPAT_HARNESS_CACHE": str(tmp_path / "cache")}
    # the last nightly: one real run of the cell here (peft as installed)
    nightly = tmp_path / "nightly.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "matrix",
            "-m",
            "cpu",
            *CELL,
            "--results",
            str(nightly),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    report, issue = tmp_path / "release-watch.md", tmp_path / "issue.md"
    args = [
        "release-watch",
        "--records",
        str(nightly),
        "--packages",
        "peft",
        "--wheels",
        str(wheels),
        "--report",
        str(report),
        "--issue-body",
        str(issue),
        "--",
        *CELL,
    ]
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    text = report.read_text()
    assert f"## peft 0.21.3 (the last run had {peft.__version__})" in text
    assert (
        "**regression** `LlamaForCausalLM-lora-single-tiny-train`: first bad release **peft 0.21.3**" in text
    )
    assert "planted regression" in text
    title, _, body = issue.read_text().partition("\n")
    assert title == "Release watch: 1 regression(s) under peft 0.21.3" and body == text
    # a second watch: every probe's records are kept, nothing runs again
    second = cli(*args, env=env)
    assert second.returncode == 0 and report.read_text() == text
    assert "making an environment" not in second.stdout and "(kept records)" in second.stdout
