"""Edits of the matrix that a release bump proposes, made with tomlkit so that comments, order and
layout of the files stay as their authors wrote them.

- a known limit for a cell the new release breaks, scoped to that cell and to the measured range
  (`transformers = ">=5.25.0"` and the other library held `==` its release), its reason quoting the
  stack's message;
- a known limit the new release retires, its range narrowed so that the new release is outside it
  (`">=5.17"` -> `">=5.17,<5.25"`), its reason kept: the limit stays true of the releases it was
  measured on;
- the default release set moved to the new release (matrix/releases.toml).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from harness.spec.matrix import REFERENCE_STACK

LIBRARIES = ("transformers", "peft")  # the packages a known limit holds a version range of
# The order of a limit's keys as the matrix files write them: scope, ranges, then why.
KEY_ORDER = ("category", "method", "layout", "tier", "check", "variant", "stack", "implementation",
             "transformers", "peft", "upstream", "reason")
DEFAULTS = {"variant": "default", "stack": REFERENCE_STACK, "implementation": "default"}
MESSAGE_CHARS = 300


class EditError(RuntimeError):
    """A matrix file cannot take the edit: the message names the file and key."""


def short_release(version: str) -> str:
    """5.25.0 -> 5.25 (an upper bound `<5.25` reads as the release line it excludes); 5.25.1 stays."""
    release = list(Version(version).release)
    while len(release) > 2 and release[-1] == 0:
        release.pop()
    return ".".join(map(str, release))


def narrowed_spec(spec: str | None, version: str) -> str:
    """The range without `version` and everything after it: None -> "<5.25"; ">=5.17" -> ">=5.17,<5.25"."""
    bound = f"<{short_release(version)}"
    return f"{spec},{bound}" if spec else bound


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class NewLimit:
    """A known limit to add to a row, with what it was measured from."""

    architecture: str
    source_file: str
    entry: dict
    cells: tuple[str, ...]


def regression_entry(record: dict, package: str, first_bad: str, last_good: str, held: dict[str, str], *,
                     with_tier: bool = False) -> dict:
    """The limit of a cell that passed under `last_good` and fails from `first_bad` on, the other
    libraries held at `held` (their releases in both runs)."""
    entry: dict = {"category": record["category"], "method": record["method"], "layout": record["layout"]}
    if with_tier:
        entry["tier"] = record["tier"]
    entry["check"] = record["check"]
    for key, default in DEFAULTS.items():
        value = record.get(key)
        if value and value != default:
            entry[key] = value
    ranges = {name: f"=={held[name]}" for name in LIBRARIES if name in held and name != package}
    if package in LIBRARIES:
        ranges[package] = f">={first_bad}"
    entry.update({name: ranges[name] for name in LIBRARIES if name in ranges})
    others = ", ".join(f"{name} {held[name]}" for name in LIBRARIES if name in held and name != package)
    entry["reason"] = (f"release-bump: first bad {package} {first_bad}, last good {last_good}"
                       f"{', with ' + others if others else ''}: {one_line(record.get('message') or '')}")
    return entry


# --- the files ------------------------------------------------------------------------------------

def _inline(entry: dict):
    """An inline table written as the matrix files write them: `{ key = value, ... }`."""
    import tomlkit

    body = ", ".join(f"{key} = {tomlkit.item(value).as_string()}" for key, value in entry.items())
    return tomlkit.parse(f"x = {{ {body} }}\n")["x"]


def _ordered(entry: dict) -> dict:
    known = [k for k in KEY_ORDER if k in entry]
    return {k: entry[k] for k in [*known, *(k for k in entry if k not in KEY_ORDER)]}


def _row(doc, path: Path, architecture: str):
    try:
        return doc["architectures"][architecture]
    except KeyError:
        raise EditError(f"{path}: no [architectures.{architecture}] table; the row moved? "
                        "Run the bump again from this commit") from None


def add_limits(path: Path, architecture: str, entries: list[dict]) -> None:
    """Append known_limits entries to a row (the array is made when the row has none)."""
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    row = _row(doc, path, architecture)
    if "known_limits" not in row:
        array = tomlkit.array()
        array.multiline(True)
        row["known_limits"] = array
    for entry in entries:
        row["known_limits"].append(_inline(_ordered(entry)))
    path.write_text(tomlkit.dumps(doc))


def narrow_limit(path: Path, architecture: str, index: int, package: str, spec: str,
                 expected_reason: str) -> None:
    """Set one range of the row's `index`-th limit (checked by its reason: the file must be the one
    the bump read)."""
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    limits = _row(doc, path, architecture).get("known_limits")
    if limits is None or index >= len(limits) or limits[index].get("reason") != expected_reason:
        raise EditError(f"{path}: architectures.{architecture}.known_limits[{index}] is not the limit the "
                        "bump measured (the file changed): run the bump again")
    entry = {key: value for key, value in limits[index].items()}
    entry[package] = spec
    limits[index] = _inline(_ordered(entry))
    path.write_text(tomlkit.dumps(doc))


def set_release(path: Path, set_name: str, package: str, version: str) -> None:
    """Move release set `set_name` to `version` of `package` (transformers/peft, or one of `also`)."""
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    try:
        body = doc["release_sets"][set_name]
    except KeyError:
        raise EditError(f"{path}: no [release_sets.{set_name}] table") from None
    if package in body:
        body[package] = version
    elif package in body.get("also", {}):
        body["also"][package] = version
    else:
        raise EditError(f"{path}: release_sets.{set_name} holds no release of {package}: add it to its "
                        "`also` table first")
    path.write_text(tomlkit.dumps(doc))
