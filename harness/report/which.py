"""`compat-harness which`: what the committed records say of one set of releases.

A user asks about their releases (the installed ones, or `--with transformers==5.20.0 ...`) for a
row (and optionally a method, layout, stack). Where that exact set (transformers and peft; torch too
when given) was measured, the answer is its verdicts, cell group by cell group. Otherwise the
answer is the nearest measured sets on each side of its transformers release, on the same peft
release and (where asked) the same torch build, with their verdicts and the bisect finding that separates
them where one does. Evidence is what `limits --check` reads (harness/report/limits.py): the
committed records and sweeps, latest run per cell and releases.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report.bisects import Finding
from harness.report.limits import Observation, vkey


@dataclass(frozen=True)
class Question:
    architecture: str
    releases: dict[str, str]  # transformers, peft, optionally torch
    method: str | None = None
    layout: str | None = None
    stack: str = "native"


def matches(q: Question, obs: Observation) -> bool:
    return (obs.architecture == q.architecture and obs.stack == q.stack
            and (q.method is None or obs.method == q.method) and (q.layout is None or obs.layout == q.layout)
            and not obs.probe)  # a bisect probe is shown as the finding, not as a set


def same_set(q: Question, obs: Observation) -> bool:
    keys = [k for k in ("transformers", "peft", "torch") if q.releases.get(k)]
    return all(str(getattr(obs, k)) == q.releases[k] for k in keys)


def verdicts(observations: list[Observation]) -> list[str]:
    """One line per method x layout: passed/failed cells, the failures' categories."""
    groups: dict[tuple[str, str], list[Observation]] = {}
    for obs in observations:
        groups.setdefault((obs.method, obs.layout), []).append(obs)
    lines = []
    for (method, layout), found in sorted(groups.items()):
        cells = {}
        for obs in found:  # a cell seen on several torch builds or devices fails if any failed
            cells[obs.cell_id] = cells.get(obs.cell_id, False) or obs.failed
        failed = sorted(c for c, f in cells.items() if f)
        categories = sorted({o.category for o in found if o.failed and o.category})
        verdict = "✓ pass" if not failed else f"✗ fail ({', '.join(categories)})"
        first = next((o for o in found if o.failed), None)
        detail = f": {failed[0]}: {first.message[:120]}" if first else ""
        passed = len(cells) - len(failed)
        lines.append(f"  {method} · {layout}: {verdict}, {passed}/{len(cells)} cells pass{detail}")
    return lines


def set_label(obs: Observation) -> str:
    return f"transformers {obs.transformers}, peft {obs.peft}, torch {obs.torch}, {obs.device}"


def held_fixed(q: Question, mine: list[Observation]) -> tuple[list[Observation], list[str]]:
    """The observations on the asked peft and torch (where asked), so that the nearest sets differ from
    the question in transformers alone; and a note for each package this row never ran on the asked
    release, which is let go (the note names the releases it did run on)."""
    line, notes = mine, []
    for package in ("peft", "torch"):
        wanted = q.releases.get(package)
        if not wanted:
            continue
        kept = [o for o in line if str(getattr(o, package)) == wanted]
        if not kept:
            ran = sorted({str(getattr(o, package)) for o in line}, key=vkey)
            notes.append(f"  (no record of this row ran {package} {wanted}; measured with {package} "
                         f"{', '.join(ran)})")
            continue
        line = kept
    return line, notes


def answer(q: Question, evidence: list[Observation], findings: list[Finding]) -> str:
    mine = [o for o in evidence if matches(q, o)]
    asked = ", ".join(f"{k} {v}" for k, v in q.releases.items() if v)
    scope = " · ".join(x for x in (q.method, q.layout, q.stack if q.stack != "native" else None) if x)
    head = f"{q.architecture}{' (' + scope + ')' if scope else ''} on {asked}"
    if not mine:
        return f"{head}: no committed record ran this row{' here' if scope else ''}."
    exact = [o for o in mine if same_set(q, o)]
    if exact:
        by_set: dict[tuple, list[Observation]] = {}
        for obs in exact:
            by_set.setdefault((obs.transformers, obs.peft, obs.torch, obs.device), []).append(obs)
        out = [f"{head}: measured."]
        for _key, found in sorted(by_set.items(), key=lambda item: [vkey(x) for x in item[0]]):
            files = len({o.source.rsplit(":", 1)[0] for o in found})
            out.append(f"{set_label(found[0])} ({files} record file(s)):")
            out.extend(verdicts(found))
        return "\n".join(out)
    out = [f"{head}: not measured; the nearest measured sets"]
    peft = q.releases.get("peft")
    line, notes = held_fixed(q, mine)
    out.extend(notes)
    wanted = vkey(q.releases["transformers"])
    below = [o for o in line if vkey(o.transformers) < wanted]
    above = [o for o in line if vkey(o.transformers) > wanted]
    same = [o for o in line if vkey(o.transformers) == wanted]  # same transformers, another set or device
    sides = []
    for name, found, pick in (("below", below, max), ("at", same, max), ("above", above, min)):
        if not found:
            continue
        release = pick((o.transformers for o in found), key=vkey)
        sides.append(release)
        at = [o for o in found if o.transformers == release]
        by_set: dict[tuple, list[Observation]] = {}
        for obs in at:
            by_set.setdefault((obs.peft, obs.torch, obs.device), []).append(obs)
        for _key, group in sorted(by_set.items(), key=lambda item: [vkey(x) for x in item[0]]):
            out.append(f"{name}: {set_label(group[0])}:")
            out.extend(verdicts(group))
    cells = {o.cell_id for o in mine}
    lo, hi = (min(sides, key=vkey), max(sides, key=vkey)) if sides else (None, None)
    for finding in findings:
        if not cells & set(finding.cells) or finding.package != "transformers":
            continue
        held = ", ".join(f"{k} {v}" for k, v in finding.held)
        inside = lo is not None and vkey(lo) <= vkey(finding.first_bad) <= vkey(hi)
        where = "between them" if inside else "for these cells"
        out.append(f"bisect ({where}): first bad transformers {finding.first_bad}, "
                   f"last good {finding.last_good}"
                   f"{', with ' + held if held else ''} [{finding.source}]")
        verdict = ("fails" if vkey(q.releases["transformers"]) >= vkey(finding.first_bad) else "passes")
        if not peft or dict(finding.held).get("peft") in (None, peft):
            out.append(f"  so {', '.join(sorted(cells & set(finding.cells)))} {verdict} on transformers "
                       f"{q.releases['transformers']} by that finding")
    if len(sides) < 2 and not same:
        out.append("  (only one side was measured: nothing brackets this release)")
    return "\n".join(out)
