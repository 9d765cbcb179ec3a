"""Optional dependencies (the pip extras), imported on first use, with a one-line message when missing."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """Loggers `names` at WARNING for the block, unless someone set their level on purpose."""
    loggers = [logging.getLogger(name) for name in names]
    unset = [logger for logger in loggers if logger.level == logging.NOTSET]
    for logger in unset:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger in unset:
            logger.setLevel(logging.NOTSET)


class LazyModule:
    """A module imported at its first attribute access; MissingExtra if it is not installed.

    `quiet`: loggers held at WARNING while it is imported, for a module that reports at
    INFO how it loaded (faiss: "Loading faiss with AVX2 support."), which is nothing a user
    acts on.
    """

    def __init__(self, name: str, extra: str, needed_by: str, *, quiet: Sequence[str] = ()):
        self._name, self._extra, self._needed_by = name, extra, needed_by
        self._quiet = tuple(quiet)
        self._module: ModuleType | None = None

    def require(self) -> ModuleType:
        if self._module is None:
            try:
                with _quiet(self._quiet):
                    self._module = importlib.import_module(self._name)
            except ModuleNotFoundError as error:
                raise MissingExtra(
                    f"{self._needed_by} needs {self._name}, which is not installed; install the "
                    f"'{self._extra}' extra: pip install -e '.[{self._extra}]'"
                ) from error
        return self._module

    def __getattr__(self, attribute: str):
        return getattr(self.require(), attribute)


faiss = LazyModule(
    "faiss",
    "search",
    "nearest-neighbour search (python -m pipeline.index, python -m pipeline.search)",
    quiet=("faiss",),
)
