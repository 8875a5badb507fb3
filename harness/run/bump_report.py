"""The release bump's Markdown report, its one-line title (the PR's or issue's) and the summary the
command prints: what is new, the cell-by-cell diff (counts, then every changed cell with its
message), the limits added and retired, the bisects, and the command that reproduces it."""

from __future__ import annotations

import json

from harness.lockfile import digest
from harness.run.release_bump import Bump, Step, lock_changes

MESSAGE = 240


def _cut(text: str, limit: int = MESSAGE) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def title(bump: Bump) -> str:
    if not bump.proposed:
        return "Release bump: no new release of a watched package"
    regressions = sum(len(s.diff.regressions) for s in bump.proposed)
    retired = sum(len(s.retired) for s in bump.proposed)
    return (
        f"Release bump: {', '.join(s.label for s in bump.proposed)} ({regressions} regression(s), "
        f"{retired} limit(s) retired)"
    )


def _step(step: Step) -> list[str]:
    c = step.candidate
    lines = [f"## {step.package} {c.previous} -> {c.newest}", ""]
    if step.error:
        return [*lines, f"Not measured: {step.error}", ""]
    d = step.diff
    changed = lock_changes(step.lock_before, step.lock_after)
    lines += [
        f"- lock: sha256 {digest(step.lock_before)} -> {digest(step.lock_after)}; {len(changed)} pin(s) "
        f"changed: {', '.join(changed[:12])}{' ...' if len(changed) > 12 else ''}",
        f"- torch: {step.torch_before}"
        + (f" -> {step.torch_after}" if step.torch_after != step.torch_before else ""),
        f"- runs: baseline {'kept' if step.baseline.reused else f'ran in {step.baseline.seconds:.0f} s'} "
        f"(`{step.baseline.path.name}`), candidate "
        f"{'kept' if step.after.reused else f'ran in {step.after.seconds:.0f} s'} (`{step.after.path.name}`)",
        "",
        f"**{d.cells} cell(s)**: {len(d.regressions)} regression(s), {len(d.declared)} already declared, "
        f"{len(d.fixes)} fix(es), {d.unchanged} unchanged, {len(d.new)} new, {len(d.vanished)} vanished; "
        f"{len(step.retired)} limit(s) retired, {len(step.added)} added.",
        "",
    ]
    if d.regressions or d.declared or d.fixes:
        lines += [
            "| cell | before | after | first bad | last good | bisect | message |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for ch in d.regressions:
            lines.append(
                f"| `{ch.cell_id}` | {ch.before} | **{ch.after}** [{ch.record.get('category')}] | "
                f"{ch.first_bad} | {ch.last_good} | {_cut(ch.bisect_note, 80)} | {_cut(ch.message)} |"
            )
        for ch in d.declared:
            lines.append(
                f"| `{ch.cell_id}` | {ch.before} | {ch.after} (declared) | | | | {_cut(ch.message)} |"
            )
        for ch in d.fixes:
            lines.append(
                f"| `{ch.cell_id}` | {ch.before} | **{ch.after}** (fixed) | | | | {_cut(ch.message)} |"
            )
        lines.append("")
    for title_, cells in (("New cells (the candidate only)", d.new), ("Vanished cells", d.vanished)):
        if cells:
            lines += [
                f"{title_}: {', '.join(f'`{c}`' for c in cells[:30])}{' ...' if len(cells) > 30 else ''}",
                "",
            ]
    if step.added:
        lines += ["### Limits added", ""]
        for added in step.added:
            lines.append(
                f"- `{added.source_file}` {added.architecture} ({', '.join(added.cells)}): "
                f"`{json.dumps(added.entry)}`"
            )
        lines.append("")
    if step.retired:
        lines += ["### Limits retired (narrowed to exclude the new release)", ""]
        for r in step.retired:
            ref = r.stale.ref
            lines.append(
                f"- `{ref.source_file}` {ref.architecture} known_limits[{ref.index}] "
                f"({ref.limit.category}): {r.package} `{r.before or '(any)'}` -> `{r.after}`; now passing: "
                f"{', '.join(f'`{c}`' for c in r.stale.passing)}"
            )
        lines.append("")
    if step.left or step.not_limits:
        lines += ["### For a maintainer", ""]
        for stale, why in step.left:
            ref = stale.ref
            lines.append(
                f"- stale limit `{ref.source_file}` {ref.architecture} known_limits[{ref.index}] "
                f"({_cut(ref.limit.reason, 100)}): {why}"
            )
        for change, why in step.not_limits:
            lines.append(f"- `{change.cell_id}`: {why}")
        lines.append("")
    return lines


def report(bump: Bump) -> str:
    base = bump.steps[0] if bump.steps else None
    held = ", ".join(f"{k} {v}" for k, v in (base.releases_before.items() if base else []))
    lines = [
        f"# {title(bump)}",
        "",
        f"Baseline: release set `{bump.set_name}` of matrix/releases.toml, `{bump.base_lock.name}` "
        f"(sha256 {digest(bump.base_lock)}): {held}; "
        f"{base.torch_before if base else 'torch'} from the host.",
        "",
        f"Selections ({len(bump.selections)}, all in one pytest session per environment):",
        "",
    ]
    lines += [f"- `{' '.join(s)}`" for s in bump.selections]
    lines += ["", f"Reproduce: `{bump.command}`", ""]
    quiet = [s for s in bump.steps if s.candidate.newest is None]
    if quiet:
        lines += ["## Not bumped", ""] + [f"- {s.package}: {s.candidate.note}" for s in quiet] + [""]
    for step in bump.steps:
        if step.candidate.newest is not None:
            lines += _step(step)
    return "\n".join(lines).rstrip() + "\n"


def summary(bump: Bump) -> list[str]:
    out = []
    for step in bump.steps:
        c = step.candidate
        if c.newest is None:
            out.append(f"{step.package}: {c.note}")
        elif step.error:
            out.append(f"{step.package} {c.newest}: not measured: {step.error[:200]}")
        else:
            d = step.diff
            out.append(
                f"{step.package} {c.previous} -> {c.newest}: {d.cells} cells, {len(d.regressions)} "
                f"regression(s), {len(d.fixes)} fix(es), {len(step.added)} limit(s) added, "
                f"{len(step.retired)} retired, {len(step.left) + len(step.not_limits)} for a maintainer"
            )
    return out
