"""The release history (matrix/release_history.json) and the load rule built on it: a release lacks
what a later one brought, and loading never fails because of the installed release."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from harness.spec.load import load_matrix, matrix_files
from harness.spec.matrix import DEFAULT_MATRIX_DIR
from harness.spec.parse import parse_matrix
from harness.spec.release_check import check_release
from harness.spec.release_facts import release_facts
from harness.spec.release_history import ReleaseHistory, dump_history, load_history

# The releases the issue named, and the two that changed the calls' facts.
RELEASES = ("5.0.0", "5.3.0", "5.6.0", "5.14.0", "5.18.0", "5.19.0")


def test_history_round_trips_as_runs_of_measured_releases(tmp_path):
    history = ReleaseHistory()
    history.record("5.1.0", {"model_types": {"llama"}})
    history.record("5.0.0", {"model_types": {"llama", "gone"}})
    history.record("5.2.0", {"model_types": {"llama", "new"}, "distributed_config_fields": {"ep_size"}})
    history.record("5.3.0", {"model_types": {"llama", "new", "gone"}})
    dump_history(history, tmp_path)
    data = json.loads((tmp_path / "release_history.json").read_text())
    assert data["facts"]["model_types"]["gone"] == [["5.0.0", "5.0.0"], ["5.3.0", "5.3.0"]]
    again = load_history(tmp_path)
    assert again.measured == ["5.0.0", "5.1.0", "5.2.0", "5.3.0"]
    assert again.first("model_types", "new") == "5.2.0"
    assert again.later_with("model_types", "new", "5.1.0") == "5.2.0"
    assert again.offered_before("model_types", "gone", "5.2.0") == "5.0.0"
    assert again.has("model_types", "gone", "5.1.0") is False and again.has("model_types", "x", "9.0") is None


@pytest.fixture(scope="module")
def committed():
    history = load_history()
    if not history.measured:
        pytest.skip("no matrix/release_history.json")
    return history


def test_every_documented_call_is_declared_from_the_release_that_introduced_it(committed):
    """`since` is measured: the first recorded release whose DistributedConfig has every field the
    call passes (a call whose fields are older says why in axes.toml and declares no `needs`)."""
    matrix = load_matrix()
    for api in matrix.apis.values():
        if not api.needs:
            continue
        firsts = [committed.first("distributed_config_fields", f) for f in api.needs]
        assert None not in firsts, f"{api.name}: a field it needs was never measured: {api.needs}"
        from packaging.version import Version

        assert api.since == max(firsts, key=Version), (api.name, api.since, firsts)


@pytest.mark.parametrize("release", RELEASES)
def test_the_matrix_loads_under_every_measured_release(committed, release):
    """check_release under the facts `release` had (its model types, experts kernels and
    DistributedConfig fields, from the history; the config classes are the installed release's):
    a row or kernel that release lacks is a gap of that release, never a load error."""
    if release not in committed.measured:
        pytest.skip(f"{release} is not in matrix/release_history.json")
    matrix, files = parse_matrix(matrix_files(DEFAULT_MATRIX_DIR))
    here = release_facts(a.model_type for a in matrix.architectures.values())
    had = {kind: {name for name, held in committed.present[kind].items() if release in held}
           for kind in committed.present}
    facts = replace(here, transformers=release, model_types=frozenset(had["model_types"]),
                    experts_kernels=frozenset(had["experts_kernels"]),
                    distributed_config_fields=frozenset(had["distributed_config_fields"]),
                    types={t: f for t, f in here.types.items() if t in had["model_types"]})
    check_release(matrix, files, facts, committed)
