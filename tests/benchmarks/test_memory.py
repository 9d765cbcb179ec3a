"""Naming the processes of a tree, and adding up what they held at the tree's peak."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks import memory


def test_label_names_modules_scripts_and_commands(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import time; time.sleep(10)")
    children = {
        "timeit": [sys.executable, "-m", "timeit", "-n1", "-r1", "import time; time.sleep(10)"],
        "job.py": [sys.executable, str(script)],
        "python -c": [sys.executable, "-c", "import time; time.sleep(10)"],
        "sleep": ["sleep", "10"],
    }
    started = {name: subprocess.Popen(argv) for name, argv in children.items()}
    try:
        time.sleep(0.5)  # each has exec'd its own command line by then
        assert {name: memory.label(child.pid) for name, child in started.items()} == {n: n for n in children}
    finally:
        for child in started.values():
            child.kill()
            child.wait()
    assert memory.label(2**22 + 12345) == f"pid {2**22 + 12345}"  # no such process


def test_rss_and_descendants_of_this_process():
    assert memory.rss_bytes(os.getpid()) > 10 * 2**20  # a Python with pytest holds more than 10 MiB
    assert memory.rss_bytes(2**22 + 12345) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert memory.descendants(os.getpid())[0] == os.getpid()
        assert child.pid in memory.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_by_process_adds_processes_of_one_name():
    tree = {
        "total_peak_rss_gib": 1.9,
        "processes": [
            {"pid": 1, "process": "pipeline.run", "peak_rss_gib": 1.8, "rss_at_total_peak_gib": 1.7},
            {"pid": 2, "process": "vgg.sandbox", "peak_rss_gib": 0.1, "rss_at_total_peak_gib": 0.1},
            {"pid": 3, "process": "vgg.sandbox", "peak_rss_gib": 0.1, "rss_at_total_peak_gib": 0.1},
        ],
    }
    # Two decoders of 0.1 GiB each at the peak: 0.2 under one name.
    assert memory.by_process(tree) == {"pipeline.run": 1.7, "vgg.sandbox": 0.2}
