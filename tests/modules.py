"""A module's source as a syntax tree, and what it imports, read without importing it (tests of layering)."""

from __future__ import annotations

import ast
import pathlib
from types import ModuleType


def syntax_tree(module: ModuleType) -> ast.Module:
    return ast.parse(pathlib.Path(module.__file__).read_text())


def imported_modules(module: ModuleType) -> set[str]:
    """Every module name an import statement of `module` names (`from x import y` counts as x)."""
    return {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(syntax_tree(module))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
