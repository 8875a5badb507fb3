"""Writing a release bump's proposal: into a tree (the working tree, or a git worktree of a new
branch made from HEAD), never over what its owner is editing.

What it writes: the candidate lock as locks/<set>.txt, the default set moved to the new releases
(matrix/releases.toml), the known limits added and narrowed (in the file that declares each row),
the records of every run of the chain (reports/records/, so the docs render from them), the
docs re-rendered from the committed records (`compat-harness render` run in the tree, with the
tree's code), and the Markdown report (reports/release-bump/). On a branch it is one commit, for a
maintainer to review and merge deliberately.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.run.limit_edits import add_limits, narrow_limit, set_release
from harness.run.release_bump import TORCH, Bump
from harness.spec.matrix import REPO_ROOT


class ProposalError(RuntimeError):
    """The proposal could not be written (git refused, render failed): the message says what to do."""


def report_path(bump: Bump) -> str:
    return f"reports/release-bump/{bump.date}-{bump.name}.md"


def records_files(bump: Bump, sha: str) -> list[tuple[Path, str]]:
    """Every run of the chain once (a step's baseline is the step before's candidate), with the name
    it is committed under: <date>-release-bump-<pkg><version>-<baseline|candidate>-<sha>.jsonl."""
    out = []
    for index, step in enumerate(bump.proposed):
        tag = f"{bump.date}-release-bump-{step.package}{step.candidate.newest}"
        if index == 0:
            out.append((step.baseline.path, f"reports/records/{tag}-baseline-{sha}.jsonl"))
        out.append((step.after.path, f"reports/records/{tag}-candidate-{sha}.jsonl"))
    return out


def write(tree: Path, bump: Bump, report: str, sha: str, log: Callable[[str], None] = print) -> list[str]:
    """Write the proposal into `tree` (a checkout of this repository); the paths written, relative."""
    written: list[str] = []
    shutil.copyfile(bump.final_lock, tree / "locks" / f"{bump.set_name}.txt")
    written.append(f"locks/{bump.set_name}.txt")
    releases = tree / "matrix" / "releases.toml"
    for step in bump.proposed:
        if step.package != TORCH:  # torch is the host's: the set holds no release of it
            set_release(releases, bump.set_name, step.package, step.candidate.newest)
    written.append("matrix/releases.toml")
    for step in bump.proposed:  # narrow first: additions go to the end, so the indexes still hold
        for retired in step.retired:
            ref = retired.stale.ref
            narrow_limit(
                tree / ref.source_file,
                ref.architecture,
                ref.index,
                retired.package,
                retired.after,
                ref.limit.reason,
            )
            written.append(ref.source_file)
    for step in bump.proposed:
        for added in step.added:
            add_limits(tree / added.source_file, added.architecture, [added.entry])
            written.append(added.source_file)
    for source, name in records_files(bump, sha):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tree / name)
        written.append(name)
    path = tree / report_path(bump)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    written.append(report_path(bump))
    render(tree, log)
    written.append("reports/")
    return list(dict.fromkeys(written))


def render(tree: Path, log: Callable[[str], None] = print) -> None:
    """`compat-harness render` in the tree with the tree's own code: the docs of its committed records."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "render"], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ProposalError(
            f"compat-harness render in {tree} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-1500:]}"
        )
    log(done.stdout.strip())


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ProposalError(f"git {' '.join(args[:3])} failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout.strip()


def head_sha(repo: Path = REPO_ROOT) -> str:
    try:
        return git(repo, "rev-parse", "--short=7", "HEAD")
    except ProposalError:
        return "nogit"


def _identity() -> dict:
    """git's author where none is configured (a CI runner): the commit still says who made it."""
    env = dict(os.environ)
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "config", "user.email"], capture_output=True, text=True
    )
    if not done.stdout.strip():
        for role in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{role}_NAME", "compat-harness release-bump")
            env.setdefault(f"GIT_{role}_EMAIL", "release-bump@compat-harness.invalid")
    return env


def on_branch(
    bump: Bump, report: str, branch: str, repo: Path = REPO_ROOT, log: Callable[[str], None] = print
) -> str:
    """The proposal as one commit on a new branch made from HEAD, written in a worktree of its own (the
    working tree and its index are left alone); the commit's sha."""
    if git(repo, "branch", "--list", branch):
        raise ProposalError(
            f"branch {branch} exists: delete it (git branch -D {branch}) or name another with --branch"
        )
    sha = head_sha(repo)
    with tempfile.TemporaryDirectory(prefix="release-bump-") as tmp:
        tree = Path(tmp) / "tree"
        git(repo, "worktree", "add", "-q", "-b", branch, str(tree), "HEAD")
        try:
            for folder in ("locks", "matrix"):
                if not (tree / folder).is_dir():
                    raise ProposalError(
                        f"HEAD has no {folder}/: commit the release sets and their locks first"
                    )
            write(tree, bump, report, sha, log)
            git(tree, "add", "-A")
            titles = ", ".join(s.label for s in bump.proposed)
            git(
                tree,
                "commit",
                "-q",
                "-m",
                f"release-bump: {titles}",
                "-m",
                f"The default release set `{bump.set_name}` moves to {titles}; the report is "
                f"{report_path(bump)}.",
                env=_identity(),
            )
            commit = git(tree, "rev-parse", "--short=7", "HEAD")
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True
            )
    return commit
