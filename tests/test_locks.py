"""Lock files: every release set has one that pins what the set holds; an environment knows which
lock it came from, and its records say so."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.lockfile import LOCK_DIR, digest, installed_lock, pinned_versions, write_stamp
from harness.report.records import environment
from harness.run import locks
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, MatrixError, ReleaseSet

ROOT = Path(__file__).resolve().parent.parent


def test_every_release_set_has_a_lock_that_pins_its_releases():
    matrix = load_matrix()
    for release_set in matrix.release_sets.values():
        path = locks.check_set(release_set)
        pinned = pinned_versions(path)
        assert "torch" not in pinned and not any(name.startswith("nvidia-") for name in pinned), path
        assert "setuptools" in pinned  # the editable install runs without build isolation
        held = ", ".join(f"{name} {version}" for name, version in release_set.releases.items())
        assert path.read_text().splitlines()[0] == (
            f"# Release set `{release_set.name}` of matrix/releases.toml: {held}."), path
    assert locks.default_set(matrix).name == "newest"


def test_a_lock_that_does_not_pin_the_set_release_is_named_with_the_fix(tmp_path):
    shutil.copy(LOCK_DIR / "newest.txt", tmp_path / "newest.txt")
    moved = ReleaseSet(name="newest", summary="", transformers="5.99.0", peft="0.21.2")
    with pytest.raises(locks.LockError, match=r"newest.txt: transformers is 5\.\d+\.\d+ but .*holds 5.99.0: "
                                              r"run `compat-harness lock newest`"):
        locks.check_set(moved, tmp_path)
    with pytest.raises(locks.LockError, match="has no lock file"):
        locks.check_set(ReleaseSet(name="absent", summary="", transformers="5.0.0", peft="0.21.2"), tmp_path)


def test_this_environment_against_a_lock(tmp_path):
    """verify_installed reads the installed distributions: a lock naming another release of an installed
    package is a mismatch, and a pin behind a marker that does not hold here is not counted."""
    import transformers

    lock = tmp_path / "probe.txt"
    lock.write_text(f"transformers=={transformers.__version__} \\\n    --hash=sha256:00\n"
                    "peft==0.0.1 \\\n    --hash=sha256:00\n"
                    "numpy==1.0.0 ; python_full_version < '3.0' \\\n    --hash=sha256:00\n")
    found = locks.verify_installed(lock)
    assert found.packages == 2
    assert found.mismatched == [f"peft: installed {__import__('peft').__version__}, locked 0.0.1"]


def test_stamp_and_record_env_name_the_lock(tmp_path):
    lock = LOCK_DIR / "newest.txt"
    stamp = write_stamp(tmp_path, "newest", lock)
    assert stamp == {"set": "newest", "file": "newest.txt", "sha256": digest(lock)}
    assert installed_lock(str(tmp_path)) == stamp
    assert json.loads((tmp_path / "compat-harness-lock.json").read_text()) == stamp
    assert installed_lock(str(tmp_path / "nowhere")) is None
    assert environment("cpu")["lock"] == installed_lock(sys.prefix)


def test_exactly_one_default_release_set(tmp_path):
    matrix_dir = tmp_path / "matrix"
    shutil.copytree(DEFAULT_MATRIX_DIR, matrix_dir)
    releases = matrix_dir / "releases.toml"
    releases.write_text(releases.read_text().replace("default = true", ""))
    with pytest.raises(MatrixError, match=r"release_sets.\*.default = None: exactly one release set"):
        load_matrix(matrix_dir)
    releases.write_text(releases.read_text().replace('also = { accelerate = "1.15.0", trl = "1.16.0" }\ngate',
                                                     'also = { accelerate = 1 }\ngate', 1))
    with pytest.raises(MatrixError, match=r"gpu-image.also.accelerate = 1: must be one exact release"):
        load_matrix(matrix_dir)
