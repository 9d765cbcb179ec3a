"""pipeline.tools.extras: a command that needs a missing extra says which one to install, in one line."""

from __future__ import annotations

import pytest

from pipeline.tools import index, search
from pipeline.tools.extras import LazyModule, MissingExtra

NEEDED_BY = "nearest-neighbour search (python -m pipeline.index, python -m pipeline.search)"
ABSENT = LazyModule("no_such_module_vgg16", "search", NEEDED_BY)
MESSAGE = (
    f"{NEEDED_BY} needs no_such_module_vgg16, which is not installed; install the 'search' extra: "
    "pip install -e '.[search]'"
)


def test_missing_module_names_the_extra():
    with pytest.raises(MissingExtra) as info:
        ABSENT.IndexFlatIP  # noqa: B018  (the first attribute access imports)
    assert str(info.value) == MESSAGE


def test_present_module_is_the_module():
    lazy = LazyModule("json", "none", "test")
    assert lazy.dumps([1]) == "[1]"
    assert lazy.require().__name__ == "json"


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        (index, ["--predictions", "out/", "--out", "idx"]),
        (search, ["--index", "idx", "--image_id", "0" * 32]),
    ],
)
def test_clis_without_faiss_print_one_line(module, argv, monkeypatch, capsys):
    monkeypatch.setattr(module, "faiss", ABSENT)
    assert module.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {MESSAGE}"]
