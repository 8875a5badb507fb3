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
