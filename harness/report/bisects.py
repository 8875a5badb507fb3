"""What a bisect found, for the docs: the first bad release of a package for some cells.

`compat-harness bisect --save FILE` writes one JSON finding (harness/run/bisect.py decides it);
the committed ones live in reports/bisects/. llm.md's transformers column names the first bad
release of a row wherever a finding covers one of its cells, beside the ranges its records show
(a range joins only the releases that ran; the bisect names the release where it turned).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.spec.matrix import REPO_ROOT

DEFAULT_BISECTS = REPO_ROOT / "reports" / "bisects"


@dataclass(frozen=True)
class Finding:
    cells: tuple[str, ...]  # the cell ids that failed under the first bad release
    package: str
    first_bad: str
    last_good: str
    runs: int
    seconds: float
    held: tuple[tuple[str, str], ...] = ()  # the other packages' releases, held fixed
    follows: str = ""  # what --pair found the failure to follow
    probed: tuple[tuple[str, str], ...] = ()  # each release it ran, "good" or "bad", in version order
    message: str = ""  # the failure under the first bad release
    source: str = ""  # the finding's file

    @property
    def text(self) -> str:
        held = "".join(f", {name} {version}" for name, version in self.held)
        return f"first bad {self.package} {self.first_bad} (bisect; last good {self.last_good}{held})"


def load_findings(directory: Path | str = DEFAULT_BISECTS) -> list[Finding]:
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        out.append(Finding(tuple(data["cells"]), data["package"], data["first_bad"], data["last_good"],
                           int(data["runs"]), float(data["seconds"]),
                           tuple(sorted(data.get("held", {}).items())), data.get("follows", ""),
                           tuple(sorted(data.get("probed", {}).items(), key=lambda item: _key(item[0]))),
                           data.get("message", ""), _shown(path)))
    return out


def _key(version: str) -> tuple:
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def findings_for(cell_ids: set[str], findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if cell_ids & set(f.cells)]
