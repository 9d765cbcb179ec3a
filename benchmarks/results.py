"""What every benchmark writes: the machine it read, repo-relative paths, one JSON and one text table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from vgg import hardware

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def relative(path: str) -> str:
    """path relative to the repository root when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, REPO]) == REPO
    return os.path.relpath(path, REPO) if inside else path


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine(device: str | None = None) -> dict:
    """This machine, read without importing TensorFlow (the model runs in child processes).

    Args:
      device: where the model ran, as `vgg.inference.Predictor.device` said (None: not run).
    """
    features = hardware.describe()
    return {
        "cpu": features["cpu_model"],
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": features["cpu_flags"],
        "native_precisions_cpu": features["cpu_native"],
        "gpus": features["gpus"],
        "device": device,
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "apache_beam": _version("apache-beam"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"),
        "python": platform.python_version(),
    }


def machine_line(m: dict) -> str:
    """The machine in one line, as every table opens."""
    flags = ", ".join(f for f, present in m["cpu_flags"].items() if present) or "none of interest"
    gpus = "; ".join(f"{g['name']} (compute capability {g['compute_capability']})" for g in m["gpus"])
    line = (
        f"machine: {m['cpu']}, {m['cores']} cores ({flags}); GPU: {gpus or 'none'}; "
        f"TF {m['tensorflow']}, Keras {m['keras']}, Beam {m['apache_beam']}"
    )
    return f"{line}; model on {m['device']}" if m["device"] else line


def command(module: str, argv: list[str] | None) -> str:
    """The command line that produced a result, as a user types it in the repo root."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(quote(a) for a in args)])


def quote(arg: str) -> str:
    """arg as a shell needs it: in single quotes when it holds a space, a glob or parentheses."""
    return f"'{arg}'" if any(c in arg for c in " *?()[]$;&|<>") else arg


def stamp(benchmark: str, module: str, argv: list[str] | None, device: str | None = None) -> dict:
    """The fields every results file opens with."""
    return {
        "benchmark": benchmark,
        "command": command(module, argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(device),
    }


def write(results: dict, text: str, folder: str, name: str) -> tuple[str, str]:
    """Writes name.json and name.txt (the printed table) into folder; returns both paths."""
    os.makedirs(folder, exist_ok=True)
    json_path, text_path = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.txt")
    with open(json_path, "w") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    with open(text_path, "w") as handle:
        handle.write(text.rstrip("\n") + "\n")
    return json_path, text_path
