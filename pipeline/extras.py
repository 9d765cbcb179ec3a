"""Optional dependencies (the pip extras), imported on first use, with a one-line message when missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class LazyModule:
    """A module imported at its first attribute access; MissingExtra if it is not installed."""

    def __init__(self, name: str, extra: str, needed_by: str):
        self._name, self._extra, self._needed_by = name, extra, needed_by
        self._module: ModuleType | None = None

    def require(self) -> ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ModuleNotFoundError as error:
                raise MissingExtra(
                    f"{self._needed_by} needs {self._name}, which is not installed; install the "
                    f"'{self._extra}' extra: pip install -e '.[{self._extra}]'"
                ) from error
        return self._module

    def __getattr__(self, attribute: str):
        return getattr(self.require(), attribute)


faiss = LazyModule("faiss", "search", "nearest-neighbour search (pipeline.index, pipeline.search)")
