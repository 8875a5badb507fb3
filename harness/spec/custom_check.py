"""A row's custom implementation (`implementation`, `config_class`) checked at load, without importing it.

Importing a model module imports torch and transformers, which collection never does (listing
thousands of cells stays fast). So the module is found with importlib's finder and its source is
read: the class must be defined there, and the config class's `model_type` must be the row's (the
registry registers it under that name). A mistake is the usual one line naming file, key and fix.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from harness.spec.matrix import Architecture, Matrix, MatrixError


def check_custom(matrix: Matrix) -> None:
    for arch in matrix.architectures.values():
        if arch.implementation:
            _class_of(arch, "implementation", arch.implementation)
            config = _class_of(arch, "config_class", arch.config_class)
            declared = _model_type(config)
            if declared is not None and declared != arch.model_type:
                raise MatrixError(arch.source_file, f"architectures.{arch.name}.config_class",
                                  arch.config_class, f"declares model_type {declared!r}, not the row's "
                                  f"{arch.model_type!r}; fix model_type or config_class")


def _source(module: str) -> Path | None:
    """The file of a dotted module, found without executing any package's __init__ (find_spec of
    a submodule would import its parents, and with them torch)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin)
    for part in rest:
        if path.name != "__init__.py":
            return None
        package = path.parent / part
        path = package / "__init__.py" if (package / "__init__.py").exists() else path.parent / f"{part}.py"
        if not path.exists():
            return None
    return path if path.suffix == ".py" else None


def _class_of(arch: Architecture, key: str, reference: str) -> ast.ClassDef:
    """The class definition a "pkg.module:Name" reference names, found in the module's package."""
    module, _, name = reference.partition(":")
    where = f"architectures.{arch.name}.{key}"
    source = _source(module)
    if source is None:
        raise MatrixError(arch.source_file, where, reference, f"module {module!r} is not importable here "
                                                              "(install its package or fix the reference)")
    tree = ast.parse(source.read_text(), str(source))
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    if name in classes:
        return classes[name]
    # a package's __init__ re-exports its classes: look in the modules it imports from
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(alias.name == name for alias in node.names):
            sub = importlib.util.resolve_name("." * node.level + (node.module or ""), module) if node.level \
                else node.module
            return _class_of(arch, key, f"{sub}:{name}")
    exported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    raise MatrixError(arch.source_file, where, reference, f"module {module!r} defines no class {name!r}",
                      sorted(set(classes) | exported))


def _model_type(config: ast.ClassDef) -> str | None:
    """The literal `model_type = "..."` of a config class body (None when it is not a literal)."""
    for node in config.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model_type"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None
