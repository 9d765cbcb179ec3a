"""./run_tests.sh's two runs (.venv on the newest Beam, .venv-flink on 2.62.0), with stand-in venvs.

The script runs on a copy of itself in a temporary checkout whose venvs are stand-ins: each
`python` records its arguments and exits with the status the test gives it, and the venvs
are already installed (their stamps are there), so nothing is installed or downloaded. The
third venv, .venv-autofaiss, holds only autofaiss: its stand-in python is pip, logged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

STAND_IN = """#!/usr/bin/env bash
# A venv's python: -c prints a Beam version; -m pytest is logged and exits with STATUS_{name}.
if [ "$1" = "-W" ] || [ "$1" = "-c" ]; then echo "{beam}"; exit 0; fi
echo "{name} $*" >> "$PYTEST_LOG"
echo "{name} ${{AUTOFAISS_PYTHON:-unset}}" >> "$ENV_LOG"
echo "pytest in {name}"
exit "${{STATUS_{name}:-0}}"
"""
AUTOFAISS_STAND_IN = """#!/usr/bin/env bash
# .venv-autofaiss's python: `-m pip ...` is logged and exits with STATUS_PIP, saying why when not 0.
echo "$*" >> "$PIP_LOG"
if [ "${STATUS_PIP:-0}" != 0 ]; then echo "ERROR: No matching distribution found for autofaiss"; fi
exit "${STATUS_PIP:-0}"
"""
AUTOFAISS_REQUIREMENTS = "scripts/requirements-autofaiss.txt"


@pytest.fixture
def checkout(tmp_path):
    """A checkout with run_tests.sh, scripts/venv.sh, both venvs installed, Flink and Prism stubbed."""
    for path in (
        "run_tests.sh",
        "scripts/venv.sh",
        "scripts/constraints-flink.txt",
        AUTOFAISS_REQUIREMENTS,
        "setup.py",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    (tmp_path / "scripts" / "flink_setup.sh").write_text(
        "ensure_flink() { :; }\nensure_job_server() { :; }\n"
    )
    (tmp_path / "scripts" / "prism_setup.sh").write_text("ensure_prism() { :; }\n")
    setup = (REPO / "setup.py").read_bytes()
    constraints = (REPO / "scripts" / "constraints-flink.txt").read_bytes()
    for venv, name, beam, extras, stamped in (
        (".venv", "MAIN", "2.77.0", "test,interop-hf,gpu-decode", setup),
        (".venv-flink", "FLINK", "2.62.0", "test", setup + constraints),
    ):
        bin_dir = tmp_path / venv / "bin"
        bin_dir.mkdir(parents=True)
        python = bin_dir / "python"
        python.write_text(STAND_IN.format(name=name, beam=beam))
        (bin_dir / "ruff").write_text("#!/bin/sh\nexit 0\n")
        for tool in (python, bin_dir / "ruff"):
            tool.chmod(0o755)
        # What scripts/venv.sh looks for: the project is installed for this setup.py (and constraints).
        (tmp_path / venv / f".installed-{extras}-{hashlib.sha256(stamped).hexdigest()[:16]}").touch()
    python = tmp_path / ".venv-autofaiss" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(AUTOFAISS_STAND_IN)
    python.chmod(0o755)
    autofaiss_stamp(tmp_path).touch()
    tools = tmp_path / "tools"  # chromium present, so the script installs nothing
    tools.mkdir()
    (tools / "chromium").write_text("#!/bin/sh\n")
    (tools / "chromium").chmod(0o755)
    return tmp_path


def autofaiss_stamp(checkout):
    """What scripts/venv.sh's ensure_plain_venv looks for: .venv-autofaiss holds this requirements file."""
    requirements = (REPO / AUTOFAISS_REQUIREMENTS).read_bytes()
    return checkout / ".venv-autofaiss" / f".installed-{hashlib.sha256(requirements).hexdigest()[:16]}"


def run_tests(checkout, *args, **statuses) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = checkout / "pytest.log"
    env = dict(os.environ, PYTEST_LOG=str(log), PATH=f"{checkout / 'tools'}:{os.environ['PATH']}")
    env.update(ENV_LOG=str(checkout / "env.log"), PIP_LOG=str(checkout / "pip.log"))
    env.pop("VENV", None)
    env.pop("AUTOFAISS_PYTHON", None)
    env.update({f"STATUS_{name}": str(status) for name, status in statuses.items()})
    done = subprocess.run(
        ["bash", str(checkout / "run_tests.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )
    return done, log.read_text().splitlines() if log.exists() else []


def test_the_suite_is_two_runs_one_per_venv_and_passes_when_both_pass(checkout):
    done, runs = run_tests(checkout, "-q")
    assert done.returncode == 0, done.stderr
    assert runs == [
        "MAIN -m pytest -m not flink -q",
        "FLINK -m pytest -m flink or beam_version -q",
    ]
    # Both runs' output is shown, each under a header naming its venv and Beam release.
    assert '==> pytest in .venv (Beam 2.77.0): -m "not flink"' in done.stdout
    assert '==> pytest in .venv-flink (Beam 2.62.0): -m "flink or beam_version"' in done.stdout
    assert done.stdout.count("pytest in MAIN") == done.stdout.count("pytest in FLINK") == 1
    assert (
        "==> results: .venv (Beam 2.77.0) exit status 0; .venv-flink (Beam 2.62.0) exit status 0"
        in done.stdout
    )


@pytest.mark.parametrize(
    ("statuses", "expected"), [({"MAIN": 1}, 1), ({"FLINK": 1}, 1), ({"MAIN": 2, "FLINK": 1}, 2)]
)
def test_either_run_failing_fails_the_suite_after_both_ran(checkout, statuses, expected):
    done, runs = run_tests(checkout, **statuses)
    assert done.returncode == expected
    assert [run.split()[0] for run in runs] == ["MAIN", "FLINK"]  # the second run still ran


def test_a_run_whose_tier_the_arguments_leave_empty_is_not_a_failure(checkout):
    # pytest's status 5: no test selected, e.g. `./run_tests.sh tests/vgg` has no flink test.
    done, _ = run_tests(checkout, "tests/vgg", FLINK=5)
    assert done.returncode == 0


def test_the_fast_tier_is_one_run_in_venv(checkout):
    done, runs = run_tests(checkout, "--fast", "-k", "parity", FLINK=1)
    assert done.returncode == 0
    assert runs == ["MAIN -m pytest -m not flink and not browser and not packaging and not slow -k parity"]


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_the_main_run_gets_the_autofaiss_venv_made_once_per_requirements_file(checkout):
    autofaiss_stamp(checkout).unlink()  # a new scripts/requirements-autofaiss.txt
    done, _ = run_tests(checkout)
    assert done.returncode == 0, done.stderr
    pip = ["-m pip install --upgrade pip", f"-m pip install -r {AUTOFAISS_REQUIREMENTS}"]
    assert lines(checkout / "pip.log") == pip
    # Both runs are told where autofaiss' python is: the interop test in the first runs it.
    python = checkout / ".venv-autofaiss" / "bin" / "python"
    assert lines(checkout / "env.log") == [f"MAIN {python}", f"FLINK {python}"]
    done, _ = run_tests(checkout)
    assert done.returncode == 0, done.stderr
    assert lines(checkout / "pip.log") == pip  # installed: the stamp is there


def test_a_failed_autofaiss_install_fails_the_suite_with_pips_reason(checkout):
    autofaiss_stamp(checkout).unlink()
    done, runs = run_tests(checkout, PIP=1)
    assert done.returncode == 1
    assert "ERROR: No matching distribution found for autofaiss" in done.stderr
    assert f"error: installing {AUTOFAISS_REQUIREMENTS} into .venv-autofaiss failed" in done.stderr
    assert runs == []  # no pytest run without it
    assert not autofaiss_stamp(checkout).exists()  # so the next run tries again


def test_the_fast_tier_needs_no_autofaiss_venv(checkout):
    shutil.rmtree(checkout / ".venv-autofaiss")
    done, runs = run_tests(checkout, "--fast")
    assert done.returncode == 0, done.stderr
    assert len(runs) == 1
    assert lines(checkout / "env.log") == ["MAIN unset"]
    assert not (checkout / ".venv-autofaiss").exists()
