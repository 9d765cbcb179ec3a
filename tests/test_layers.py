"""The packages' layering, read from every module's import statements (nested imports too).

vgg (the model) <- pipeline.contract (the output's shape) <- pipeline.storage (files
anywhere) <- pipeline.job (the Beam job) and pipeline.tools (what reads its output); the
job and the tools never import each other.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import pipeline
import pipeline.job
import pipeline.tools
import vgg
from tests.modules import imported_modules


def modules_of(package) -> list[str]:
    return sorted(
        name for _, name, _ in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    )


def imports(name: str) -> set[str]:
    return imported_modules(importlib.import_module(name))


def under(found: set[str], *prefixes: str) -> set[str]:
    return {name for name in found if any(name == p or name.startswith(f"{p}.") for p in prefixes)}


@pytest.mark.parametrize("name", modules_of(vgg))
def test_vgg_knows_neither_beam_nor_the_pipeline(name):
    assert not under(imports(name), "apache_beam", "pipeline")


def test_the_contract_is_beam_free_and_below_everything_else_in_pipeline():
    # It imports the standard library, numpy, pyarrow and vgg: nothing of Beam or of pipeline.
    assert under(imports("pipeline.contract"), "apache_beam", "pipeline") == set()


def test_storage_is_below_the_job_and_the_tools():
    assert not under(imports("pipeline.storage"), "pipeline.job", "pipeline.tools", "pipeline.run")


def test_the_tables_are_below_the_job_and_the_tools():
    # pipeline.table (the Delta tables and their commit protocol) is read by both.
    assert not under(imports("pipeline.table"), "pipeline.job", "pipeline.tools", "pipeline.run")


@pytest.mark.parametrize("name", modules_of(pipeline.tools))
def test_the_tools_never_import_the_job(name):
    assert not under(imports(name), "pipeline.job", "pipeline.run")


@pytest.mark.parametrize("name", modules_of(pipeline.job))
def test_the_job_never_imports_the_tools(name):
    assert not under(imports(name), "pipeline.tools")


def test_every_module_has_a_home():
    # Nothing flat but the entry points, the contract, storage and logging: the job lives in
    # pipeline.job, the tools in pipeline.tools (their `python -m pipeline.X` commands are
    # the thin modules at the top).
    top = {name for _, name, is_package in pkgutil.iter_modules(pipeline.__path__) if not is_package}
    assert top == {
        *("contract", "storage", "table", "logs", "run"),
        *("index", "search", "report", "show", "export", "upgrade"),
    }
