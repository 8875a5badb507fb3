"""The committed docs as a reader meets them: no machine paths, a light dashboard, and an
llm.md whose table parses with a row per architecture of the matrix.

`compat-harness render --check` (make test) proves these files are what the committed records
give; these tests prove what a reader gets from them.
"""

from __future__ import annotations

import re

import pytest

from harness.report.records import REPO_ROOT
from harness.spec.load import load_matrix
from tests.test_render import llm_table

REPORTS = REPO_ROOT / "reports"
RENDERED = sorted([*REPORTS.glob("*.md"), *REPORTS.glob("models/*.md"), *REPORTS.glob("stacks/*.md"),
                   *REPORTS.glob("*.html")])
# Independent of harness.report.machine_paths: the roots under which machines keep checkouts, venvs
# and caches.
MACHINE_PATH = re.compile(r"(?<![\w.:/-])/(?:home|root|tmp|work|opt|usr|var|mnt|srv|scratch|data|Users)/")
DASHBOARD_LIMIT = 1_000_000

pytestmark = pytest.mark.skipif(not RENDERED, reason="no rendered docs under reports/")


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: p.relative_to(REPORTS).as_posix())
def test_no_absolute_path_of_a_machine_in_the_rendered_docs(path):
    text = path.read_text(encoding="utf-8")
    found = [text[max(0, m.start() - 40):m.end() + 40] for m in MACHINE_PATH.finditer(text)]
    assert not found, found[:3]


def test_the_dashboard_stays_light():
    assert (REPORTS / "index.html").stat().st_size < DASHBOARD_LIMIT


def test_llm_md_has_a_row_per_architecture_in_the_seed_shape():
    table = llm_table((REPORTS / "llm.md").read_text(encoding="utf-8"))
    assert sorted(table) == sorted(load_matrix().architectures)


SPAN = re.compile(r"\d+\.\d+(?:\.\d+)?(?:–\d+\.\d+(?:\.\d+)?)? [✓✗⊘]")


def _llm_rows() -> dict[str, str]:
    """Each architecture's first row of llm.md's table (the one its verdict rests on)."""
    rows: dict[str, str] = {}
    for line in (REPORTS / "llm.md").read_text(encoding="utf-8").splitlines():
        found = re.match(r"\| `([^`]+)` \|", line)
        if found and line.count(" | ") == 5:
            rows.setdefault(found.group(1), line)
    return rows


def _dashboard_rows() -> dict[str, tuple[str, str, str]]:
    """Each architecture's first reference-stack row of index.html: (verdict kind, text, releases)."""
    html = (REPORTS / "index.html").read_text(encoding="utf-8")
    rows: dict[str, tuple[str, str, str]] = {}
    row = (r'<tr id="arch-[^"]+" data-arch="([^"]+)"(?! data-stack)[^>]*>\n<th>.*?</th>\n'
           r'<td class="verdict v-([a-z/-]+)">([^<]*)</td>\n<td class="rel">(.*?)</td>')
    for found in re.finditer(row, html):
        rows.setdefault(found.group(1), (found.group(2), found.group(3), found.group(4)))
    return rows


def _family_rows() -> dict[str, tuple[str, str]]:
    """Each architecture's verdict and releases as its family page states them."""
    rows = {}
    for page in sorted((REPORTS / "models").glob("*.md")):
        for section in page.read_text(encoding="utf-8").split("\n## `")[1:]:
            name = section.split("`", 1)[0]
            verdict = re.search(r"^\| Verdict \| (.*) \|$", section, re.M)
            spans = re.search(r"^\| transformers \(required cells\) \| (.*) \|$", section, re.M)
            if verdict and spans:
                rows[name] = (verdict.group(1), spans.group(1))
    return rows


def test_llm_md_the_dashboard_and_the_family_pages_agree_on_every_row():
    """One row, one verdict: the releases each view gives a row, the verdict the dashboard and the
    family page state, and llm.md's counts against the dashboard's verdicts. A remote-code row that
    waits for the opt-in reads 'not run', never 'not supported'."""
    names = sorted(load_matrix().architectures)
    llm, dashboard, family = _llm_rows(), _dashboard_rows(), _family_rows()
    assert sorted(llm) == sorted(dashboard) == names and set(names) <= set(family)
    for name in names:
        kind, text, dashboard_spans = dashboard[name]
        family_verdict, family_spans = family[name]
        llm_spans = SPAN.findall(llm[name].rsplit(" | ", 1)[1])
        assert llm_spans == SPAN.findall(dashboard_spans) == SPAN.findall(family_spans), name
        assert family_verdict == text or family_verdict.startswith(text + " ("), (name, family_verdict, text)
        if kind == "not-run":
            assert all(s.endswith("⊘") for s in llm_spans), name
        assert "not supported: remote-code" not in text, name
    counts = re.search(r"Verdicts: (\d+) supported,\s+(\d+) not supported, (\d+) not verified, (\d+) not run",
                       (REPORTS / "llm.md").read_text(encoding="utf-8"))
    kinds = [dashboard[n][0] for n in names]
    assert tuple(int(x) for x in counts.groups()) == tuple(
        kinds.count(k) for k in ("supported", "not-supported", "not-verified", "not-run"))
    blocked = [n for n in names if all(s.endswith("⊘") for s in SPAN.findall(llm[n].rsplit(" | ", 1)[1]))]
    assert len(blocked) == kinds.count("not-run")
