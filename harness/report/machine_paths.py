"""Absolute paths of the machine that ran a cell, shortened for display in the docs.

Record messages and tracebacks carry whatever paths the running machine had (a CI clone in
/tmp, a venv's site-packages, a user's cache). The docs must not publish them: they say nothing
to a reader and differ per machine. Render shows every message through `strip_machine_paths`,
which keeps the part of a path a reader can use and drops the machine's prefix; the record itself
is never rewritten (it stays the evidence, as written by the harness).

    /work/main/.evidence/matrix/architectures.toml     -> matrix/architectures.toml
    /tmp/ci/.venv/lib/python3.11/site-packages/peft/x.py -> peft/x.py
    /usr/lib/python3.12/contextlib.py                   -> contextlib.py
    /root/.cache/compat-harness/tiny/Llama-ab12         -> …/tiny/Llama-ab12
"""

from __future__ import annotations

import re

# The repository's top-level directories: a path through one of them is shown from there on.
REPO_DIRS = ("harness", "matrix", "tests", "benchmarks", "reports", "custom")
# Install locations: a path through one of them is shown from the package on.
INSTALL_DIRS = (re.compile(r"/(?:site|dist)-packages/"), re.compile(r"/lib/python\d+(?:\.\d+)?/"))
# An absolute path: a "/" that starts a word (not "1/2", not the "//" of a URL, not a shortened
# "…/x"), then a name.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:<…-])/(?=[\w.~])[^\s'\"`,;:()\[\]{}<>|\\]+")


def shorten(path: str) -> str:
    """One absolute path as the docs show it (see the module docstring)."""
    for install_dir in INSTALL_DIRS:
        installed = list(install_dir.finditer(path))
        if installed:
            return path[installed[-1].end():] or path.rsplit("/", 1)[-1]
    parts = path.split("/")
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in REPO_DIRS:
            return "/".join(parts[i:])
    tail = "/".join(p for p in parts[-2:] if p)
    return f"…/{tail}" if tail else "…"


def strip_machine_paths(text) -> str:
    """Text with every absolute path shortened; anything else is left as it was."""
    return ABSOLUTE_PATH.sub(lambda m: shorten(m.group(0)), str(text or ""))


def has_machine_path(text: str) -> list[str]:
    """The absolute paths in a text (what the docs must never contain)."""
    return ABSOLUTE_PATH.findall(text)
