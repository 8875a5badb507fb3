"""The matrix checked against the installed transformers, at load: model types, the keys of `tiny`
and `real_shapes` configs, the class each row's auto class builds, TP style names.

The facts come from harness/spec/release_facts.py (asked once per release, cached), so this stays fast.

Loading never fails because of the installed release. A release may lack what a row names: its
model type, a config key, the class its auto class builds, a TP style. Whether that is a typo or
something other releases have is a question about other releases, answered by what was measured
in them (matrix/release_history.json, harness/spec/release_history.py):
- on a release older than the newest measured one, a row the release cannot build is a gap: the
  row's cells skip as `needs-newer-transformers`, naming the fact that decided it (`row_gap`,
  asked again when a cell builds its config);
- on the newest measured release or a newer one, the same thing is the matrix's mistake: a
  MatrixError naming the file, the key and the fix (a typo, or `min_transformers` for a type that
  only an unmeasured newer release has).
Experts kernels and documented calls are per-cell facts (harness/stacks/native/placement.py).

A remote-code row (`trust_remote_code = true`) may name a model type that transformers does not
have (the hub code defines it). Where transformers does have the type, its auto class must not
build the row's declared class natively: then the row is not remote code on this release.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from harness.spec.matrix import Architecture, Matrix, MatrixError
from harness.spec.release_facts import ConfigFacts, ModelTypeFacts, ReleaseFacts, release_facts
from harness.spec.release_history import ReleaseHistory, load_history


def check_release(matrix: Matrix, files: dict[str, dict[str, str]], facts: ReleaseFacts | None = None,
                  history: ReleaseHistory | None = None) -> None:
    """Raise MatrixError for the first value the installed transformers contradicts where no release
    explains it (see the module docstring).

    `files` maps a section and an entry's name to the file that defines it (for messages). `facts`
    and `history` default to the installed release's and the committed ones.
    """
    if facts is None:
        facts = release_facts(arch.model_type for arch in matrix.architectures.values())
    if history is None:
        history = _history(matrix.files[0]) if matrix.files else ReleaseHistory()
    newest = not _older_than_measured(facts.transformers, history)
    for arch in matrix.architectures.values():
        try:
            found = _model_type(arch, facts, history)
            if found is None:
                continue
            _builds(arch, found, facts.transformers)
            _config_keys(arch.source_file, f"architectures.{arch.name}.tiny", arch.tiny, found.config,
                         facts.transformers)
            _config_keys(arch.source_file, f"architectures.{arch.name}.real_config", arch.real_config,
                         found.config, facts.transformers)
            _tp_styles(arch, facts)
        except MatrixError:
            if newest:
                raise
    for name, kernel in matrix.experts.items():
        if kernel.value not in facts.experts_kernels and not history.first("experts_kernels", kernel.value):
            raise MatrixError(files["experts"][name], f"experts.{name}.value", kernel.value,
                              f"is not an experts implementation of transformers {facts.transformers}, nor "
                              "of any release in matrix/release_history.json", sorted(facts.experts_kernels))
    for name, shape in matrix.real_shapes.items():
        found = facts.types.get(matrix.architectures[shape.architecture].model_type)
        if found is not None:
            try:
                _config_keys(shape.source_file, f'real_shapes."{name}".config', shape.config, found.config,
                             facts.transformers)
            except MatrixError:
                if newest:
                    raise


def row_gap(arch: Architecture) -> str | None:
    """Why the installed release cannot build the row as the matrix declares it (None: it can): the
    fact that decided, for a `needs-newer-transformers` skip. Only a release older than the newest
    measured one can have a gap; on the others the same fact stopped the load."""
    facts = release_facts([arch.model_type])
    history = _history(arch.source_file)
    try:
        found = _model_type(arch, facts, history)
        if found is None:
            return _absent_type(arch, facts, history)
        _builds(arch, found, facts.transformers)
        _config_keys(arch.source_file, f"architectures.{arch.name}.tiny", arch.tiny, found.config,
                     facts.transformers)
        _tp_styles(arch, facts)
    except MatrixError as exc:
        return f"{exc.key} = {exc.value!r}: {exc.problem}"
    return None


@functools.lru_cache(maxsize=8)
def _history(matrix_file: str) -> ReleaseHistory:
    """The release history beside a matrix file (read once per process)."""
    return load_history(Path(matrix_file).parent)


def _older_than_measured(release: str, history: ReleaseHistory) -> bool:
    from packaging.version import Version

    newest = history.newest()
    return newest is not None and Version(release) < Version(newest)


def _absent_type(arch: Architecture, facts: ReleaseFacts, history: ReleaseHistory) -> str | None:
    """The gap of a row whose model type the release lacks (None: it has it, or the row brings it)."""
    if arch.model_type in facts.model_types or arch.trust_remote_code or arch.implementation:
        return None
    later = history.later_with("model_types", arch.model_type, facts.transformers)
    where = (f"; the first measured release with it is {later} (matrix/release_history.json)" if later
             else f"; min_transformers = {arch.min_transformers!r}" if arch.min_transformers else "")
    return f"transformers {facts.transformers} has no model type {arch.model_type!r}{where}"


def _model_type(arch: Architecture, facts: ReleaseFacts, history: ReleaseHistory) -> ModelTypeFacts | None:
    """The facts of the row's model type, or None where the release lacks it and another release
    (measured, or the row's min_transformers) explains why."""
    from packaging.version import Version

    if arch.model_type in facts.model_types:
        return facts.types[arch.model_type]
    if arch.trust_remote_code or arch.implementation:
        return None  # the hub's code or the custom registry defines it (harness/spec/custom_check.py)
    release = facts.transformers
    if history.later_with("model_types", arch.model_type, release):
        return None
    if arch.min_transformers and Version(release) < Version(arch.min_transformers):
        return None
    close = difflib.get_close_matches(arch.model_type, sorted(facts.model_types), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    key = f"architectures.{arch.name}.model_type"
    if arch.min_transformers:
        raise MatrixError(arch.source_file, key, arch.model_type,
                          f"transformers {release} has no model type {arch.model_type!r}{hint}, though the "
                          f"row's min_transformers = {arch.min_transformers!r} says it should; fix "
                          "model_type or min_transformers")
    raise MatrixError(arch.source_file, key, arch.model_type,
                      f"transformers {release} has no model type {arch.model_type!r}{hint}, nor has any "
                      "release in matrix/release_history.json: fix the typo; if a release newer than those "
                      "has it, declare min_transformers = \"<its first release>\" (or record that release: "
                      "compat-harness release-history); if it exists only as hub remote code, set "
                      "trust_remote_code = true")


def _builds(arch: Architecture, found: ModelTypeFacts, release: str) -> None:
    """The row's auto class must build the row's class (a remote-code row: must not)."""
    path = f"architectures.{arch.name}"
    builds = found.builds.get(arch.auto_class, ())
    if arch.trust_remote_code:
        if arch.expected_class in builds:
            raise MatrixError(arch.source_file, f"{path}.trust_remote_code", True,
                              f"transformers {release} builds {arch.expected_class} natively for model type "
                              f"{arch.model_type!r}: drop trust_remote_code and declare min_transformers = "
                              "\"<the first release that has it>\"")
        return
    if not builds:
        raise MatrixError(arch.source_file, f"{path}.auto_class", arch.auto_class,
                          f"transformers {release} has no {arch.auto_class} class for model type "
                          f"{arch.model_type!r}", [a for a, names in found.builds.items() if names])
    if arch.expected_class not in builds:
        key = f"{path}.hf_class" if arch.hf_class else path
        raise MatrixError(arch.source_file, key, arch.expected_class,
                          f"{arch.auto_class} builds {' or '.join(builds)} for model type "
                          f"{arch.model_type!r} in transformers {release}, not {arch.expected_class}: set "
                          f"hf_class = {builds[0]!r} (the row's name may keep its own spelling) or fix "
                          "model_type")


def _config_keys(file: str, path: str, table: dict, config: ConfigFacts, release: str) -> None:
    """Every key must be an argument of the config class (or a table for one of its sub-configs)."""
    for key, value in table.items():
        if key in config.sub_configs:
            if not isinstance(value, dict):
                raise MatrixError(file, f"{path}.{key}", value,
                                  f"must be a table of {config.sub_configs[key].name} arguments")
            _config_keys(file, f"{path}.{key}", value, config.sub_configs[key], release)
        elif key not in config.keys:
            close = difflib.get_close_matches(key, sorted(config.keys), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MatrixError(file, f"{path}.{key}", value,
                              f"{config.name} of transformers {release} takes no argument {key!r}{hint}")


def _tp_styles(arch: Architecture, facts: ReleaseFacts) -> None:
    if not facts.tp_styles:
        return
    for key, style in arch.tp_plan.items():
        if style not in facts.tp_styles:
            close = difflib.get_close_matches(style, sorted(facts.tp_styles), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MatrixError(arch.source_file, f'architectures.{arch.name}.tp_plan."{key}"', style,
                              f"is not a TP style of transformers {facts.transformers}{hint}",
                              sorted(facts.tp_styles))
