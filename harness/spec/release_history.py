"""What every measured transformers release offered: model types, experts kernels and the fields of
`DistributedConfig`, read from each release itself and kept in matrix/release_history.json.

The matrix is loaded under one installed release, which can only answer for itself. Whether a
model type it lacks is a typo or something a later release brought, and from which release a
documented call is offered, are questions about other releases. They are answered here, from the
facts that `compat-harness release-history` read out of each release (its registries and
dataclass fields, harness/spec/release_facts.py) when that release was installed (the sweep does
this for every release it runs). Nothing here is declared by hand.

The file keeps, per kind of fact and per name, the runs of consecutive measured releases that had
it: {"model_types": {"deepseek_v32": [["5.3.0", "5.25.0"]]}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.spec.matrix import DEFAULT_MATRIX_DIR

HISTORY_FILE = "release_history.json"
FORMAT = 1
KINDS = ("model_types", "experts_kernels", "distributed_config_fields")


def _key(release: str):
    from packaging.version import Version

    return Version(release)


@dataclass
class ReleaseHistory:
    """The measured releases (oldest first) and, per kind and name, the releases that had it."""

    measured: list[str] = field(default_factory=list)
    present: dict[str, dict[str, set[str]]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def has(self, kind: str, name: str, release: str) -> bool | None:
        """Whether `release` had the fact (None: that release was never measured)."""
        if release not in self.measured:
            return None
        return release in self.present[kind].get(name, ())

    def releases_with(self, kind: str, name: str) -> list[str]:
        return sorted(self.present[kind].get(name, ()), key=_key)

    def first(self, kind: str, name: str) -> str | None:
        """The oldest measured release that had it."""
        found = self.releases_with(kind, name)
        return found[0] if found else None

    def newest(self) -> str | None:
        return self.measured[-1] if self.measured else None

    def offered_before(self, kind: str, name: str, release: str) -> str | None:
        """The newest measured release older than `release` that had it: a fact once offered."""
        older = [r for r in self.releases_with(kind, name) if _key(r) < _key(release)]
        return older[-1] if older else None

    def later_with(self, kind: str, name: str, release: str) -> str | None:
        """The oldest measured release newer than `release` that had it."""
        newer = [r for r in self.releases_with(kind, name) if _key(r) > _key(release)]
        return newer[0] if newer else None

    def record(self, release: str, facts: dict[str, list[str] | set[str] | frozenset[str]]) -> None:
        """Add (or replace) one release's facts."""
        if release not in self.measured:
            self.measured = sorted({*self.measured, release}, key=_key)
        for kind in KINDS:
            names = set(facts.get(kind, ()))
            table = self.present[kind]
            for name in set(table) | names:
                held = table.setdefault(name, set())
                held.discard(release)
                if name in names:
                    held.add(release)


def history_path(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> Path:
    return Path(matrix_dir) / HISTORY_FILE


def load_history(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> ReleaseHistory:
    """The committed history (empty when the file is absent: every fact then comes from the
    installed release alone)."""
    path = history_path(matrix_dir)
    if not path.is_file():
        return ReleaseHistory()
    data = json.loads(path.read_text())
    measured = sorted(data["measured"], key=_key)
    history = ReleaseHistory(measured=measured)
    index = {release: i for i, release in enumerate(measured)}
    for kind in KINDS:
        for name, runs in data["facts"].get(kind, {}).items():
            held = history.present[kind].setdefault(name, set())
            for first, last in runs:
                held.update(measured[index[first]:index[last] + 1])
    return history


def dump_history(history: ReleaseHistory, matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> Path:
    """Write the history as runs of consecutive measured releases (a stable, diffable file)."""
    index = {release: i for i, release in enumerate(history.measured)}
    facts: dict[str, dict[str, list[list[str]]]] = {}
    for kind in KINDS:
        out = facts.setdefault(kind, {})
        for name in sorted(history.present[kind]):
            positions = sorted(index[r] for r in history.present[kind][name])
            runs: list[list[str]] = []
            for pos in positions:
                if runs and index[runs[-1][1]] == pos - 1:
                    runs[-1][1] = history.measured[pos]
                else:
                    runs.append([history.measured[pos], history.measured[pos]])
            if runs:
                out[name] = runs
    path = history_path(matrix_dir)
    text = json.dumps({"format": FORMAT, "package": "transformers", "measured": history.measured,
                       "facts": facts}, indent=1, sort_keys=True)
    path.write_text(text + "\n")
    return path
