"""One logging set-up for every command line (vgg.logs, pipeline.logs), and faiss' notices kept off."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vgg.logs
from pipeline.contract import prediction_rows, predictions_schema
from tests.conftest import REPO
from tests.pipeline.conftest import PROVENANCE, commit_output

OURS = ("pipeline", "vgg")


def python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (logging is set up once per process), from the checkout."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )


def test_one_format_our_progress_and_others_warnings():
    done = python(
        "import logging\n"
        "from pipeline import logs\n"
        "logs.configure(logging.INFO)\n"
        "logging.getLogger('pipeline.run').info('ours')\n"
        "logging.getLogger('vgg.inference').info('also ours')\n"
        "logging.getLogger('apache_beam.runners').info('theirs, hidden')\n"
        "logging.getLogger('faiss.loader').info('theirs, hidden')\n"
        "logging.getLogger('tensorflow').warning('theirs, shown')\n"
    )
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"  # FORMAT's %(asctime)s
    assert [re.sub(f"^{stamp} ", "", line) for line in done.stderr.splitlines()] == [
        "INFO pipeline.run: ours",
        "INFO vgg.inference: also ours",
        "WARNING tensorflow: theirs, shown",
    ]
    assert all(re.match(stamp, line) for line in done.stderr.splitlines())


def run_main(module, argv, tmp_path):
    return module.main([str(arg).format(tmp=tmp_path) for arg in argv])


@pytest.mark.parametrize(
    ("name", "argv", "level", "packages"),
    [
        ("pipeline.run", ["--top_k", "x"], logging.INFO, OURS),
        (
            "pipeline.tools.index",
            ["--predictions", "{tmp}/p-*.parquet", "--out", "{tmp}/i"],
            logging.INFO,
            OURS,
        ),
        ("pipeline.tools.search", ["--index", "{tmp}/i", "--image_id", "0" * 32], logging.WARNING, OURS),
        (
            "pipeline.tools.report",
            ["--predictions", "{tmp}/p-*.parquet", "--out", "{tmp}/r.html"],
            logging.WARNING,
            OURS,
        ),
        ("pipeline.tools.show", ["{tmp}"], logging.WARNING, OURS),
        ("vgg.predict", ["--weights", "{tmp}/w.npz", "{tmp}/a.jpg"], logging.WARNING, ("vgg",)),
        ("vgg.weights", ["inspect", "{tmp}/w.npz"], logging.WARNING, ("vgg",)),
    ],
)
def test_every_command_line_sets_up_logging_through_the_one_function(
    name, argv, level, packages, tmp_path, monkeypatch, capsys
):
    import importlib

    calls = []
    monkeypatch.setattr(
        vgg.logs,
        "configure",
        lambda level=logging.WARNING, *, packages=("vgg",): calls.append((level, packages)),
    )
    # Every argv fails fast (no input, no index, no weights): one error line, status 2.
    assert run_main(importlib.import_module(name), argv, tmp_path) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert calls == [(level, packages)]


def write_predictions(folder) -> None:
    rng = np.random.default_rng(0)
    keys = [(f"{i:032x}", f"/photos/{i}.jpg", 64, 48) for i in range(3)]
    rows = prediction_rows(keys, rng.random((3, 1000)), rng.random((3, 4096), dtype=np.float32), 5)
    schema = predictions_schema(embeddings=True, provenance=PROVENANCE)
    (folder / "predictions").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "predictions" / "part-0.parquet")
    commit_output(folder)


def test_faiss_would_announce_itself_at_info():
    # Why the next tests matter: imported plainly under an INFO root logger, faiss says how it loaded.
    done = python("import logging\nlogging.basicConfig(level=logging.INFO)\nimport faiss\n")
    assert "Loading faiss" in done.stderr


def test_index_cli_keeps_faiss_notices_off_the_screen(tmp_path):
    write_predictions(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.tools.index",
            "--predictions",
            tmp_path,
            "--out",
            tmp_path / "index",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "indexed 3 images" in done.stdout
    assert "faiss" not in done.stderr.lower(), done.stderr  # no "Loading faiss with AVX2 support."
    assert "INFO pipeline.tools.index: added 3 vectors" in done.stderr  # the build's own progress still shows


def test_faiss_through_extras_is_quiet_even_for_a_caller_logging_at_info():
    done = python(
        "import logging\nlogging.basicConfig(level=logging.INFO)\n"
        "from pipeline.tools.extras import faiss\nfaiss.require()\n"
        "print(logging.getLogger('faiss').level)\n"
    )
    assert "Loading faiss" not in done.stderr, done.stderr
    assert done.stdout.strip() == "0"  # faiss' logger is left as it was found (NOTSET) afterwards
