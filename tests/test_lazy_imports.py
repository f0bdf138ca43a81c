"""Every ``from fgdeploy.x import name`` in the package and in ``bench/``, also those inside functions (imported lazily, so a
renamed or removed name would only fail when that code path runs, e.g. the TensorRT runner on a GPU box),
names something that exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import fgdeploy

PACKAGE = Path(fgdeploy.__file__).resolve().parent
SOURCES = [*sorted(PACKAGE.rglob("*.py")), *sorted((PACKAGE.parent / "bench").glob("*.py"))]


def _fgdeploy_imports() -> list[tuple[str, int, str, str]]:
    found = []
    for path in SOURCES:
        rel = path.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fgdeploy"):
                found += [(str(rel), node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_every_fgdeploy_import_names_something_that_exists():
    imports = _fgdeploy_imports()
    assert len(imports) > 100   # the scan sees the package
    missing = []
    for where, line, module, name in imports:
        target = importlib.import_module(module)
        if name != "*" and not hasattr(target, name):
            try:
                importlib.import_module(f"{module}.{name}")   # `from pkg import submodule`
            except ModuleNotFoundError:
                missing.append(f"{where}:{line}: from {module} import {name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)
