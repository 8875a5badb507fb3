"""Where a row of reports/llm.md comes from: one `llm_row` per architecture of the matrix.

The table keeps the seed's shape (Architecture, Models, Example HF Models with recipes) and adds
three short columns, each computed from the row's view (`harness.report.views`). Models names the
code the marks rest on where it is not transformers' own class (`implementation_label`: remote
code @ revision, or a custom class); `resting_views` picks the row's own implementation or its
custom one, or both, each a row:

- **FSDP2 with SFT / PEFT**, what the seed promises: the fsdp2 group of each method (every
  tier and check), e.g. `sft ✓ · lora ✓`;
- **Other layouts**: every other layout of the matrix, methods folded when they agree, e.g.
  `single ✓ · tp: sft ✓, lora ✗ numerics · ep ep4 n/a`;
- **transformers**: the releases the row's required cells ran on, as ranges of equal outcome
  (`harness.report.releases`), e.g. `5.17–5.23 ✓ · 5.24 ✗ regression`, and the first bad
  release wherever a bisect found one for a cell of the row (`harness.report.bisects`).

Each mark is a Markdown reference link (`[tp ✓][12.tp]`, defined at the end of the page) to the
layout's section on the row's family page, where the runs (versions, device, date) and the
messages are: the table's text stays short, in a terminal as on GitHub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.report import releases
from harness.report.bisects import Finding, findings_for
from harness.report.views import STACK_OWN, ArchView, Group
from harness.spec.matrix import CUSTOM, FORCE_HF, REFERENCE_STACK, REMOTE_CODE

VERDICT_LAYOUT = "fsdp2"


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and markdown-it's anchors) give a heading: lower case, punctuation
    dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def layout_heading(layout: str, arch: str, stack: str = REFERENCE_STACK, implementation: str = "") -> str:
    """The heading of a layout's section on a family page (the target of the row's links); another
    stack's sections name it ('`fsdp2` on trl: LlamaForCausalLM'), a custom implementation's too
    ('`fsdp2` (custom): DeciLMForCausalLM')."""
    where = "" if stack == REFERENCE_STACK else f" on {stack}"
    impl = f" ({implementation})" if implementation else ""
    return f"`{layout}`{where}{impl}: {arch}"


def row_heading(view: ArchView) -> str:
    """The heading a row's marks link to when a mark is several layouts': the reference stack's
    architecture section, or for another stack or implementation the stacks table of that
    architecture (which puts them side by side)."""
    if view.stack == REFERENCE_STACK and not view.implementation:
        return f"`{view.name}`"
    return stacks_heading(view.name)


def implementation_label(view: ArchView) -> str:
    """Whose code a view's verdicts rest on, for a reader: "" for transformers' own classes,
    'remote code `repo@REVISION`' (the hub snapshot that ran), 'custom `pkg.module`', a stack's own class
    or its switch to transformers' (force_hf)."""
    kind = view.implementation_kind
    if view.implementation == FORCE_HF:
        return "transformers' class, force_hf"
    if kind == STACK_OWN:  # the stack's class where one ran, else what the row itself is
        if view.ran:
            return f"{view.stack}'s own class"
        kind = view.arch.implementation_kind
    if kind == REMOTE_CODE:
        return remote_code_label(view)
    if kind == CUSTOM:
        return f"custom `{view.arch.implementation.partition(':')[0]}`"
    return ""


def remote_code_label(view: ArchView) -> str:
    """'remote code `org/name@REVISION`': which repo's code ran, at which snapshot (the record's
    provenance); the row's repo with 'not run' where no record ran it."""
    repo = view.code.get("repo") or view.arch.remote_repo
    revision = view.code.get("revision")
    return f"remote code `{repo}@{revision[:10]}`" if revision else f"remote code `{repo}`, not run"


def stacks_heading(arch: str) -> str:
    """The heading of an architecture's table of every stack's marks on its family page."""
    return f"Stacks: `{arch}`"


def family_page(view: ArchView) -> str:
    return f"models/{slug(view.arch.families[0])}.md"


def cell_text(text: str) -> str:
    """Plain text safe inside a table cell: no pipes, no raw HTML, one line."""
    text = " ".join(str(text or "").split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Link:
    label: str
    target: str


@dataclass(frozen=True)
class LlmRow:
    architecture: str
    models: str
    examples: str
    fsdp2: str
    layouts: str
    releases: str
    links: tuple[Link, ...]

    @property
    def cells(self) -> tuple[str, ...]:
        return (self.architecture, self.models, self.examples, self.fsdp2, self.layouts, self.releases)


HEADER = ("Architecture", "Models", "Example HF Models", "FSDP2 with SFT / PEFT", "Other layouts",
          "transformers")


def by_mark(items: list[tuple[str, Group]]) -> list[tuple[list[str], Group]]:
    """(name, group) pairs joined by equal mark, in first-seen order: [(['single', 'tp'], g), ...]."""
    joined: dict[str, tuple[list[str], Group]] = {}
    for name, group in items:
        joined.setdefault(group.text, ([], group))[0].append(name)
    return list(joined.values())


def layout_items(layout: str, groups: list[Group]) -> list[tuple[str, Group]]:
    """A layout's (name, group) pairs: one when its methods agree ('tp'), else one per method
    ('tp (lora)')."""
    if len({g.text for g in groups}) == 1:
        return [(layout, groups[0])]
    return [(f"{layout} ({g.method})", g) for g in groups]


def examples_text(view: ArchView) -> str:
    examples = view.arch.examples
    text = f"`{examples[0]}`" + (" etc." if len(examples) > 1 else "")
    if view.arch.recipes:
        text += "; recipes " + ", ".join(f"`{r}`" for r in view.arch.recipes)
    return cell_text(text)


def llm_row(view: ArchView, layouts: list[str], methods: list[str], findings: list[Finding] = (),
            sweep_notes: list[str] = ()) -> LlmRow:
    links: dict[str, Link] = {}

    def link(layout: str | None) -> str:
        """The label of a layout's section on the family page, or of the row's section there."""
        label = f"{view.key}.{layout}" if layout else view.key
        heading = (layout_heading(layout, view.name, view.stack, view.implementation) if layout
                   else row_heading(view))
        links[label] = Link(label, f"{family_page(view)}#{github_anchor(heading)}")
        return label

    def marks(items: list[tuple[str, Group]]) -> str:
        """'single tp [✓][34] · ep ep4 n/a': names, then their mark, linked where it has evidence
        (to the layout's section when the mark is one layout's, else to the row's section)."""
        parts = []
        for names, group in by_mark(items):
            mark = group.text
            if group.na_reason is None and group.outcome is not None:
                layouts = {g.layout for name, g in items if name in names}
                mark = f"[{mark}][{link(layouts.pop() if len(layouts) == 1 else None)}]"
            parts.append(f"{' '.join(names)} {mark}")
        return " · ".join(parts) or "—"

    # Names are unique within a cell: methods in the verdict, layouts or "layout (method)" here.
    verdict = [(m, view.group(m, VERDICT_LAYOUT)) for m in methods]
    others = [item for layout in layouts if layout != VERDICT_LAYOUT
              for item in layout_items(layout, [view.group(m, layout) for m in methods])]
    release_text = releases.spans_text(view.release_spans)
    if view.regression:
        release_text += " **regression**"
    for finding in findings_for({c.cell.id for c in view.cells}, list(findings)):
        where = sorted({f"{c.cell.layout} {c.cell.method}" for c in view.cells if c.cell.id in finding.cells})
        release_text += f" · {', '.join(where)}: {finding.text}"
    for note in sweep_notes:
        release_text += f" · {note}"
    label = implementation_label(view)
    return LlmRow(
        architecture=f"`{view.name}`",
        models=cell_text(", ".join(view.arch.families)) + (f" ({label})" if label else ""),
        examples=examples_text(view),
        fsdp2=marks(verdict),
        layouts=marks(others),
        releases=release_text,
        links=tuple(links[k] for k in sorted(links)),
    )


def resting_views(own: ArchView, custom: ArchView | None) -> list[ArchView]:
    """The views a row of llm.md shows: the row's own implementation; for a remote-code row with a
    custom class, the custom one instead where only it ran (the remote code not cached or not
    opted in), and both, each labelled, where both ran."""
    if custom is None or not custom.cells or not custom.ran:
        return [own]
    return [own, custom] if own.ran else [custom]


def markdown_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"
