"""The matrix checked against the installed transformers, at load: model types, the keys of `tiny`
and `real_shapes` configs, the class each row's auto class builds, TP style names, experts kernels.

The facts come from harness/spec/release_facts.py (asked once per release, cached), so this stays fast.

How the harness knows that a newer transformers has a model type: it cannot read other releases'
lists at load time (nothing is downloaded), so the row declares it. `min_transformers` names the
first release that has the type: below it the type may be missing and the row's cells skip as
`needs-newer-transformers`; from it on the type must exist. A type that the installed release does
not have, on a row that declares neither `min_transformers` nor `trust_remote_code`, is a typo until
the row says otherwise, and the error names both fixes.

A remote-code row (`trust_remote_code = true`) may name a model type that transformers does not
have (the hub code defines it). Where transformers does have the type, its auto class must not
build the row's declared class natively: then the row is not remote code on this release.
"""

from __future__ import annotations

import difflib

from harness.spec.matrix import Architecture, Matrix, MatrixError, version_in
from harness.spec.release_facts import ConfigFacts, ModelTypeFacts, ReleaseFacts, release_facts


def check_release(matrix: Matrix, files: dict[str, dict[str, str]]) -> None:
    """Raise MatrixError for the first value the installed transformers contradicts.

    `files` maps a section and an entry's name to the file that defines it (for messages).
    """
    facts = release_facts(arch.model_type for arch in matrix.architectures.values())
    for arch in matrix.architectures.values():
        found = _model_type(arch, facts)
        if found is None:
            continue
        _builds(arch, found, facts.transformers)
        _config_keys(arch.source_file, f"architectures.{arch.name}.tiny", arch.tiny, found.config,
                     facts.transformers)
        _config_keys(arch.source_file, f"architectures.{arch.name}.real_config", arch.real_config,
                     found.config, facts.transformers)
    for arch in matrix.architectures.values():
        _tp_styles(arch, facts)
    for name, shape in matrix.real_shapes.items():
        found = facts.types.get(matrix.architectures[shape.architecture].model_type)
        if found is not None:
            _config_keys(shape.source_file, f'real_shapes."{name}".config', shape.config, found.config,
                         facts.transformers)
    for name, kernel in matrix.experts.items():
        offered = version_in(facts.transformers, kernel.transformers)
        if offered and kernel.value not in facts.experts_kernels:
            raise MatrixError(files["experts"][name], f"experts.{name}.value", kernel.value,
                              f"is not an experts implementation of transformers {facts.transformers} "
                              "(or limit the kernel to the releases that have it with `transformers`)",
                              sorted(facts.experts_kernels))


def _model_type(arch: Architecture, facts: ReleaseFacts) -> ModelTypeFacts | None:
    """The facts of the row's model type, or None where the release may lack it (declared so)."""
    from packaging.version import Version

    if arch.model_type in facts.model_types:
        return facts.types[arch.model_type]
    if arch.trust_remote_code or arch.implementation:
        return None  # the hub's code or the custom registry defines it (harness/spec/custom_check.py)
    release = facts.transformers
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
                      f"transformers {release} has no model type {arch.model_type!r}{hint}: fix the typo; "
                      "if a newer transformers has it, declare min_transformers = \"<its first release>\"; "
                      "if it exists only as hub remote code, set trust_remote_code = true")


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
