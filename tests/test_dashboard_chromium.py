"""index.html in a real browser: Debian's headless Chromium draws the coloured grid, the filters
(architecture, layout, status; read from the URL fragment) hide rows and columns without a
server, and a `<script>` inside a failure message stays text (in the DOM as text, never run).

Install the browser with: apt-get install -y --no-install-recommends chromium
"""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from harness.report.records import REPO_ROOT
from harness.report.render import render_docs
from harness.report.results import load_results
from harness.spec.load import load_matrix
from tests.conftest import write_rows
from tests.test_render import EP_LAYOUT, ROWS, planted_records
from tests.test_results import write

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian chromium is not installed: apt-get install -y --no-install-recommends chromium",
)
WIDTH, HEIGHT = 1200, 800
# The td background colours of index.html.j2 (the test fails if the template changes them).
PASS_RGB, FAIL_RGB = (0xA6, 0xE3, 0xB0), (0xF5, 0xA3, 0xA3)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--force-color-profile=srgb", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def read_png(path: Path) -> tuple[int, int, list[bytes], int]:
    """A tiny PNG decoder (8-bit RGB/RGBA, non-interlaced): width, height, rows, bytes/pixel."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((x + p) & 0xFF for x, p in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                upper_left = previous[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, previous[i], upper_left)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def colour_counts(rows: list[bytes], bpp: int) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows:
        for x in range(0, len(row), bpp):
            rgb = (row[x], row[x + 1], row[x + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
    return counts


def near(counts: dict, target: tuple[int, int, int], tolerance: int = 3) -> int:
    return sum(n for rgb, n in counts.items()
               if all(abs(c - t) <= tolerance for c, t in zip(rgb, target, strict=True)))


@pytest.fixture
def matrix(matrix_dir):
    """The three rows and the MoE-only layout of test_render, so some cells are n/a."""
    write_rows(matrix_dir, ROWS)
    with (matrix_dir / "axes.toml").open("a") as handle:
        handle.write(EP_LAYOUT)
    return load_matrix(matrix_dir)


@pytest.fixture
def index_html(matrix, tmp_path) -> Path:
    path = write(tmp_path / "records" / "run.jsonl", planted_records(matrix))
    html = render_docs(matrix, load_results([path]))["index.html"]
    out = tmp_path / "index.html"
    out.write_text(html, encoding="utf-8")
    return out


def test_screenshot_shows_the_coloured_grid(index_html, tmp_path):
    shot = tmp_path / "grid.png"
    chromium(tmp_path, f"--screenshot={shot}", index_html.as_uri())
    width, height, rows, bpp = read_png(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    counts = colour_counts(rows, bpp)
    assert len(counts) > 20, "the screenshot is blank"
    # Whole cells, not just the legend's swatches (about 40x20 pixels each).
    assert near(counts, PASS_RGB) > 5000, "no green pass cells in the screenshot"
    assert near(counts, FAIL_RGB) > 2000, "no red fail cell in the screenshot"  # one: Mixtral sft single


def test_dom_has_every_grid_cell_and_the_script_stays_text(index_html, matrix, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", index_html.as_uri()).stdout
    groups = len(matrix.methods) * len(matrix.layouts)
    assert dom.count('<td class="cell ') == groups * len(matrix.architectures)
    assert dom.count('data-status="fail"') == 1 and 'data-status="pass"' in dom
    assert re.search(r'class="cell s-na"[^>]*>\s*<div class="na" title="[^"]*MoE[^"]*">n/a</div>', dom)
    # The message is in the DOM as text; the only script is the page's own filter script, and
    # the title shows that the message's script never ran.
    assert "CUDA out of memory &lt;script&gt;document.title=\"pwned\"&lt;/script&gt;" in dom
    assert dom.count("<script") == 1 and "Filters: architecture" in dom
    assert "<title>compat-harness: compatibility grid</title>" in dom
    assert "3 of 3 architectures shown" in dom


def shown_rows(dom: str) -> list[str]:
    return re.findall(r'<tr id="arch-(\w+)" data-arch="\w+">', dom)


def test_filters_from_the_url_fragment_hide_rows_and_columns(index_html, tmp_path):
    """#layout=single&status=fail: only Mixtral (its single sft cell failed), only single columns."""
    dom = chromium(tmp_path, "--dump-dom", index_html.as_uri() + "#layout=single&status=fail").stdout
    assert shown_rows(dom) == ["MixtralForCausalLM"]
    assert "1 of 3 architectures shown" in dom
    visible = re.findall(r'<t[hd][^>]* data-layout="(\w+)"(?![^>]*hidden)', dom)
    assert visible and set(visible) == {"single"}
    dom = chromium(tmp_path, "--dump-dom", index_html.as_uri() + "#arch=qwen").stdout
    assert shown_rows(dom) == ["Qwen3ForCausalLM"]
    dom = chromium(tmp_path, "--dump-dom", index_html.as_uri() + "#status=pass").stdout
    assert shown_rows(dom) == ["LlamaForCausalLM", "MixtralForCausalLM"]


def test_filtered_screenshot_shows_only_the_failing_row(index_html, tmp_path):
    shot = tmp_path / "filtered.png"
    chromium(tmp_path, f"--screenshot={shot}", index_html.as_uri() + "#layout=single&status=fail")
    _, _, rows, bpp = read_png(shot)
    counts = colour_counts(rows, bpp)
    assert near(counts, FAIL_RGB) > 2000, "the failing single cell is not drawn"
    # Mixtral's single lora cell passed: one green cell, not a grid of them.
    assert 1000 < near(counts, PASS_RGB) < 40000


COMMITTED = REPO_ROOT / "reports" / "index.html"


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed reports/index.html")
def test_the_committed_dashboard_draws_in_the_browser(tmp_path):
    shot = tmp_path / "committed.png"
    chromium(tmp_path, f"--screenshot={shot}", COMMITTED.as_uri())
    _, _, rows, bpp = read_png(shot)
    counts = colour_counts(rows, bpp)
    assert near(counts, PASS_RGB) > 5000 and near(counts, FAIL_RGB) > 2000
