"""Benchmark: the host path, what the job costs per image outside the model, against the decoder's own rate.

    python -m benchmarks.host_path                          # writes benchmarks/results/host_path.{json,txt}
    python -m benchmarks.host_path --baseline 74bd981       # and the same at that revision, as "before"
    python -m benchmarks.host_path --quick --images 16 --results /tmp/h    # a check, not a figure

Runs the real job (`benchmarks.host_path_job`: read, sandboxed decode, batching, the
handler, FormatPredictions, both Parquet writers, the Delta commit, with --embeddings)
with only the model's forward pass replaced by a stand-in of negligible cost, on 640×480
and 12 MP JPEGs: one worker process pinned to one core, and two worker processes
(DirectRunner multi_processing) on two cores. Its steady rate comes from two input sizes
(start-up removed, as benchmarks.bench does): the photos, and the same photos hard-linked
--repeat times under other names (other inputs to the job, read and decoded in full), so
that the difference is many seconds of work against a start-up that varies by about a
second, with two processes too; h = images/s per core given. d is the decoder's own rate
on one pinned core (benchmarks.bench.bench_decode) over the small run's photos, those the
job decodes; the target is h >= 0.8 d. The per-image breakdown measures read, decode, pipe
transfer, postprocess and write directly on the same photos; "batching/Beam overhead" is
the residual: the job's cost per image on one core minus the others.

With --baseline REF the same measurement runs at git revision REF (a temporary worktree,
this python) and is stored beside the current figures as "before".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import bench, images, memory, results, tables

STAND_IN = "host path: the model's forward pass is a stand-in; no figure here is the model's"
TARGET = 0.8  # h >= TARGET * d
PARTS = ("read", "decode", "pipe transfer", "postprocess", "write")
RESIDUAL = "batching/Beam overhead (residual)"
EXTRA_ROUNDS = 2
MODULES = ("benchmarks/host_path.py", "benchmarks/host_path_job.py")  # copied into a --baseline tree
_SUMMARY = re.compile(r"^summary: (\d+) inputs, (\d+) labelled, (\d+) failed", re.MULTILINE)


def pinned(cores: set[int]):
    """A preexec_fn that pins the child to cores: its decoder children and workers inherit them."""
    return lambda: os.sched_setaffinity(0, cores)


def run_job(tree: str, folder: str, out: str, weights: str, cores: set[int], processes: int) -> dict:
    """One run of the stand-in job over folder's JPEGs, pinned to cores; its wall and peak tree RSS."""
    argv = [sys.executable, "-m", "benchmarks.host_path_job", "--input", f"{folder}/*.jpg", "--output", out,
            "--weights", weights, "--embeddings"]  # fmt: skip
    if processes > 1:
        argv += [f"--direct_num_workers={processes}", "--direct_running_mode=multi_processing"]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    # preexec_fn: this process starts its children with no other thread running (the sampler starts after).
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    process = subprocess.Popen(argv, cwd=tree, **pipes, preexec_fn=pinned(cores))  # noqa: PLW1509
    with memory.TreeSampler(process.pid) as sampler:
        stdout, stderr = process.communicate(timeout=3600)
    wall = time.perf_counter() - start
    found = _SUMMARY.search(stdout)
    expected = len([n for n in os.listdir(folder) if n.endswith(".jpg")])
    if process.returncode != 0 or found is None or int(found.group(2)) != expected:
        raise RuntimeError(
            f"the host-path job over {folder} failed (exit {process.returncode}; expected {expected} "
            f"labelled):\n{stdout[-1000:]}\n{stderr[-3000:]}"
        )
    return {"wall_s": wall, "memory": sampler.result()}


def repeated(paths: list[str], folder: str, times: int) -> str:
    """A folder of the photos hard-linked `times` times each, as rNN-NAME: other names, so other inputs."""
    os.makedirs(folder, exist_ok=True)
    for copy in range(times):
        for path in paths:
            target = os.path.join(folder, f"r{copy:02d}-{os.path.basename(path)}")
            if not os.path.exists(target):
                os.link(path, target)
    return folder


def breakdown(tree: str, folder: str, count: int, core: int) -> dict:
    """benchmarks.host_path_job --breakdown in tree, pinned to one core: µs per image of each part, and d."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.host_path_job", "--breakdown", f"{folder}/*.jpg", str(count)],
        cwd=tree, capture_output=True, text=True, timeout=3600, preexec_fn=pinned({core}),  # noqa: PLW1509
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the breakdown failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(tree: str, inputs: dict, args: argparse.Namespace, scratch: str) -> dict:
    """Every figure of one source tree, per image size."""
    cores = sorted(os.sched_getaffinity(0))
    process_counts = [1] if args.quick or len(cores) < 2 else [1, 2]
    sizes = {}
    for name, (small, large, n_small, n_large) in inputs.items():
        entry: dict = {"images": {"small": n_small, "large": n_large, "folder": results.relative(large)}}
        for processes in process_counts:
            given = set(cores[-processes:])
            rounds: list[dict] = []
            # A noisy start-up can make the larger run no slower (bench.steady refuses that): up
            # to EXTRA_ROUNDS more rounds then, each size keeping its fastest wall.
            while len(rounds) < args.rounds or (
                len(rounds) < args.rounds + EXTRA_ROUNDS
                and min(r["wall_large_s"] for r in rounds) <= min(r["wall_small_s"] for r in rounds)
            ):
                runs = {
                    size: run_job(tree, folder, os.path.join(scratch, f"{name}-{processes}-{size}"),
                                  args.weights, given, processes)
                    for size, folder in (("small", small), ("large", large))
                }  # fmt: skip
                peak = max((run["memory"] for run in runs.values()), key=lambda m: m["total_peak_rss_gib"])
                rounds.append({
                    "wall_small_s": runs["small"]["wall_s"], "wall_large_s": runs["large"]["wall_s"],
                    "total_peak_rss_gib": peak["total_peak_rss_gib"], "memory": peak,
                })  # fmt: skip
            found = bench.steady(rounds, n_small, n_large)
            found["memory"] = {"total_peak_rss_gib": found["memory"]["total_peak_rss_gib"]}
            found["cores"] = processes
            found["images_per_s_per_core"] = found["steady_images_per_s"] / processes
            entry[f"processes_{processes}"] = found
        parts = breakdown(tree, small, min(n_small, args.breakdown_images), cores[-1])
        h = entry["processes_1"]["images_per_s_per_core"]
        d = parts.pop("d_per_core")
        job_us = 1e6 / h
        entry["breakdown_us"] = {
            **{part: parts[part] for part in PARTS},
            RESIDUAL: job_us - sum(parts[part] for part in PARTS),
            "job per image on one core": job_us,
        }
        entry["breakdown_images"] = parts["images"]
        entry.update({"h_per_core": h, "d_per_core": d, "h_over_d": h / d})
        entry["verdict"] = (
            f"h/d {h / d:.2f} {'>=' if h >= TARGET * d else '<'} {TARGET}: target "
            f"{'met' if h >= TARGET * d else 'not met'}"
        )
        sizes[name] = entry
    return sizes


def baseline_tree(ref: str, folder: str) -> str:
    """A worktree of ref in folder, with this revision's host-path modules (what runs there) copied in."""
    subprocess.run(["git", "worktree", "add", "--detach", folder, ref], cwd=results.REPO, check=True,
                   capture_output=True)  # fmt: skip
    for module in MODULES:
        shutil.copy(os.path.join(results.REPO, module), os.path.join(folder, module))
    return folder


def table(result: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a host_path.json."""
    trees = [("now", result["sizes"])]
    if result.get("before"):
        trees.append((f"before ({result['before']['revision']})", result["before"]["sizes"]))
    head = ("size", "code", "h 1 proc /s/core", "h 2 procs /s/core", "d /s/core", "h/d")
    body, parts_body, verdicts = [], [], []
    for name in result["sizes"]:
        for label, sizes in trees:
            entry = sizes[name]
            two = entry.get("processes_2")
            body.append((name, label, f"{entry['h_per_core']:.1f}",
                         f"{two['images_per_s_per_core']:.1f}" if two else "", f"{entry['d_per_core']:.1f}",
                         f"{entry['h_over_d']:.2f}"))  # fmt: skip
            parts_body.append((name, label, *(f"{v:.0f}" for v in entry["breakdown_us"].values())))
            if label == "now":
                verdicts.append(f"{name}: {entry['verdict']}")
    parts_head = (
        "size",
        "code",
        *(f"{part} µs" for part in next(iter(result["sizes"].values()))["breakdown_us"]),
    )
    lines = [
        results.machine_line(result["machine"]),
        *([""] if markdown else []),
        tables.table(head, body, markdown=markdown),
        "",
        "per image, µs (one worker process on one core; the residual: the job's cost minus the rest):",
        *([""] if markdown else []),
        tables.table(parts_head, parts_body, markdown=markdown),
        "",
        *verdicts,
        result["stand_in"],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.host_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", default="output/bench-host-path", help="scratch: images, weights, job outputs"
    )
    parser.add_argument(
        "--results", default=results.RESULTS, help="where host_path.json and host_path.txt go"
    )
    parser.add_argument(
        "--images", type=int, default=960, help="photos made at 640x480 (12 MP: 1/4); the small run's input"
    )
    parser.add_argument(
        "--repeat", type=int, default=8, help="the large run's input: each photo hard-linked this many times"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of each job run; the fastest wall is kept"
    )
    parser.add_argument("--breakdown_images", type=int, default=80, help="photos the per-part figures use")
    parser.add_argument("--weights", help="weights file for the launcher's checks (default: synthesized)")
    parser.add_argument("--quick", action="store_true", help="640x480 and one worker process only")
    parser.add_argument("--baseline", metavar="REF", help="also measure git revision REF, stored as 'before'")
    args = parser.parse_args(argv)
    if args.images < 8 or args.rounds < 1 or args.breakdown_images < 1 or args.repeat < 2:
        parser.error(
            "--images must be >= 8, --repeat >= 2, --rounds and --breakdown_images >= 1. "
            f"Received: {args.images}, {args.repeat}, {args.rounds}, {args.breakdown_images}"
        )
    args.out = os.path.abspath(args.out)
    if args.weights:  # the jobs run elsewhere too (the baseline's worktree)
        args.weights = os.path.abspath(args.weights)
    print(STAND_IN, flush=True)
    # The launcher checks a weights file; the stand-in never reads it, so untrained ones do.
    args.weights, _, weights_info = bench.prepare_weights(args.out, args.weights, for_peers=False)
    inputs = {}
    for name, size in bench.SIZES.items():
        if args.quick and name != "640x480":
            continue
        count = args.images if name == "640x480" else max(args.images // 4, 8)
        photos = os.path.join(args.out, "images", f"{name}-{count}")
        paths = images.make_images(photos, size, count)
        large = repeated(paths, f"{photos}-x{args.repeat}", args.repeat)
        inputs[name] = (photos, large, count, count * args.repeat)
    found = {
        **results.stamp("host_path", "benchmarks.host_path", argv),
        "stand_in": STAND_IN,
        "weights": weights_info,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "target": f"h_over_d >= {TARGET}",
        "sizes": measure(results.REPO, inputs, args, os.path.join(args.out, "jobs")),
    }
    if args.baseline:
        with tempfile.TemporaryDirectory(prefix="host-path-baseline-") as temp:
            tree = baseline_tree(args.baseline, os.path.join(temp, "tree"))
            try:
                revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, check=True,
                                          capture_output=True, text=True).stdout.strip()  # fmt: skip
                found["before"] = {
                    "revision": revision,
                    "sizes": measure(tree, inputs, args, os.path.join(args.out, "jobs-before")),
                }
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=results.REPO,
                               capture_output=True)  # fmt: skip
    text = table(found)
    print(text)
    print("wrote " + ", ".join(map(results.relative, results.write(found, text, args.results, "host_path"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
