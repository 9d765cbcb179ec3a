"""Where the float32 job's memory goes: each part measured in its own step, then the whole job's tree.

    python -m benchmarks.memory_budget        # writes benchmarks/results/memory_budget.{json,txt}

A fresh Python (as a worker is) imports and loads what the job does, one part at a time,
and the resident memory each step adds is that part's share: Python with NumPy, pyarrow and
Pillow; Beam with the job's own modules; the TensorFlow and Keras runtime; the model with its
weights; the activations of one batch of the job's size (the process's peak during the batch
over its memory before it), with the convolutions sliced as the job runs them and, for
comparison, on the whole batch. The decoder child (`vgg.sandbox`) is measured at its peak
after decoding the largest test image. Then `python -m pipeline.run` runs on 640×480 and
12 MP JPEGs with the bench's flags and its whole process tree is sampled
(`benchmarks.memory`); what the parts leave unexplained of that peak is the job's buffers
and everything else (Beam's bundles, prefetched images, Parquet writers, the commit).
Weights are synthesized (UNTRAINED) unless --weights is given: memory does not depend on
their values. Memory is resident set size (RSS); a shared library's pages count in every
process that maps them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import bench, images, memory, results, tables
from benchmarks.report import MEMORY_TARGET_GB

MIB = 2**20


def _rss() -> int:
    return memory.rss_bytes(os.getpid()) or 0


def _peak() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def steps(weights: str, batch: int, conv_batch: str) -> dict:
    """In this (fresh) process: the RSS each part adds, in bytes, in the order a worker meets them."""
    out = {}
    last = _rss()
    out["python"] = last

    def step(name: str) -> None:
        nonlocal last
        now = _rss()
        out[name] = now - last
        last = now

    import numpy as np
    import PIL.Image  # noqa: F401
    import pyarrow  # noqa: F401

    step("numpy_pyarrow_pillow")
    import apache_beam  # noqa: F401
    import apache_beam.runners.direct.direct_runner  # noqa: F401

    import pipeline.run  # noqa: F401
    import pipeline.table  # noqa: F401

    step("beam_and_job")
    from vgg._tensorflow import tf  # noqa: F401

    step("tensorflow_keras")
    from vgg.inference import Predictor

    predictor = Predictor(weights, conv_batch=json.loads(conv_batch))
    step("model_weights")
    out["model_peak_over_after"] = max(_peak() - _rss(), 0)
    before = _rss()
    predictor(np.zeros((batch, 224, 224, 3), np.uint8))
    out["activations"] = _peak() - before
    out["conv_batch"] = predictor.conv_batch
    out["weight_bytes"] = int(sum(w.numpy().nbytes for w in predictor.model.weights))
    return out


def in_child(weights: str, batch: int, conv_batch: int | None | str) -> dict:
    argv = [sys.executable, "-m", "benchmarks.memory_budget", "--steps", weights, str(batch),
            json.dumps(conv_batch)]  # fmt: skip
    done = subprocess.run(argv, cwd=results.REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the memory steps failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decoder_peak(path: str) -> int:
    """The sandboxed decoder child's peak RSS (bytes) after decoding the file at path."""
    from vgg.sandbox import IsolatedDecoder

    decoder = IsolatedDecoder()
    try:
        with open(path, "rb") as handle:
            decoder(handle.read())
        (child,) = [p for p in memory.descendants(os.getpid()) if memory.label(p) == "vgg.sandbox"]
        with open(f"/proc/{child}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    finally:
        decoder.close()


def job_tree(folder: str, out: str, weights: str) -> dict:
    """The real job (the bench's flags) on folder: its tree's peak (benchmarks.memory)."""
    return bench.timed_job(bench.ours(folder, out, weights))["memory"]


def table(data: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a memory_budget.json."""
    gib = 2**30
    lines = [results.machine_line(data["machine"]), ""]
    parts = data["parts"]
    rows = [(label, f"{parts[key] / MIB:.0f}") for key, label in PART_LABELS]
    rows.append((f"activations, batch {data['batch_size']}, convolutions on the whole batch",
                 f"{data['activations_whole_batch'] / MIB:.0f}"))  # fmt: skip
    lines.append(
        f"Parts, measured one step at a time in a fresh process (MiB); conv slices of "
        f"{data['conv_batch']}; weights' own bytes {data['weight_bytes'] / MIB:.0f} MiB:"
    )
    lines += ["", tables.table(("part", "MiB"), rows, markdown=markdown), ""]
    rows = []
    for name, entry in data["jobs"].items():
        peak = entry["tree"]["total_peak_rss_gib"]
        processes = " + ".join(f"{k} {v:.2f}" for k, v in memory.by_process(entry["tree"]).items())
        rows.append((name, f"{peak:.3f}", f"{peak * gib / 1e9:.3f}", f"{entry['rest'] / MIB:.0f}", processes))
    lines += [
        "The job's whole tree at its peak; the rest = peak minus the parts above (and the decoder):",
        "",
        tables.table(("images", "GiB", "GB", "rest MiB", "at the peak (GiB)"), rows, markdown=markdown),
    ]
    target = data["target_gb"]
    worst = max(e["tree"]["total_peak_rss_gib"] for e in data["jobs"].values()) * gib / 1e9
    verdict = "met" if worst <= target else f"missed by {100 * (worst / target - 1):.1f}%"
    lines += ["", f"target: float32 job's whole tree <= {target} GB: {worst:.3f} GB, {verdict}"]
    return "\n".join(lines)


PART_LABELS = (
    ("python", "Python interpreter"),
    ("numpy_pyarrow_pillow", "NumPy, pyarrow, Pillow"),
    ("beam_and_job", "Beam and the job's modules (deltalake among them)"),
    ("tensorflow_keras", "TensorFlow and Keras runtime"),
    ("model_weights", "model: weights and graph"),
    ("activations", "activations of one batch (conv slices)"),
    ("decoder", "decoder child (vgg.sandbox), after a 12 MP JPEG"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_budget", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="output/memory_budget", help="scratch: images, weights, job outputs")
    parser.add_argument("--results", default=results.RESULTS, help="where memory_budget.{json,txt} go")
    parser.add_argument("--weights", help="weights file (default: synthesized, UNTRAINED)")
    parser.add_argument("--images", type=int, default=48, help="images per job run")
    parser.add_argument("--steps", nargs=3, metavar=("WEIGHTS", "BATCH", "CONV"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps:  # the child: one JSON line
        print(json.dumps(steps(args.steps[0], int(args.steps[1]), args.steps[2])))
        return 0
    if args.images < 1:
        parser.error(f"--images must be >= 1. Received: {args.images}")
    args.out = os.path.abspath(args.out)
    weights, _, weights_info = bench.prepare_weights(args.out, args.weights, for_peers=False)
    sliced = in_child(weights, bench.BATCH_SIZE, "auto")
    whole = in_child(weights, bench.BATCH_SIZE, None)
    folders = {name: images.make_images(os.path.join(args.out, "images", name), size, args.images)
               for name, size in bench.SIZES.items()}  # fmt: skip
    largest = max(folders["12mp"], key=os.path.getsize)
    parts = {key: sliced[key] for key, _ in PART_LABELS if key != "decoder"}
    parts["decoder"] = decoder_peak(largest)
    jobs = {}
    for name, paths in folders.items():
        tree = job_tree(os.path.dirname(paths[0]), os.path.join(args.out, f"run-{name}"), weights)
        jobs[name] = {"tree": tree, "rest": tree["total_peak_rss_gib"] * 2**30 - sum(parts.values())}
    data = {
        **results.stamp("memory_budget", "benchmarks.memory_budget", argv),
        "weights": weights_info,
        "batch_size": bench.BATCH_SIZE,
        "conv_batch": sliced["conv_batch"],
        "weight_bytes": sliced["weight_bytes"],
        "parts": parts,
        "activations_whole_batch": whole["activations"],
        "jobs": jobs,
        "target_gb": MEMORY_TARGET_GB,
    }
    text = table(data)
    print(text)
    written = results.write(data, text, args.results, "memory_budget")
    print("wrote " + ", ".join(results.relative(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
