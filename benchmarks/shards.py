"""Benchmark: the same 640x480 photos as loose files and as tar shards: wall, images/s, files opened.

    python -m benchmarks.shards                                        # the full run
    python -m benchmarks.shards --results /tmp/r --images 8 --per_shard 4 --rounds 1 --read_only

Makes --images JPEGs (quality 90, crops of the bundled photos, the main benchmark's
recipe), packs them into tar shards of --per_shard images (WebDataset layout, written
with tarfile), and measures, for each layout in alternating rounds, each in a fresh
process on the DirectRunner:

- read: the job's read step alone (pipeline.job.read.shards.ReadInputs, then a count), which is
  where loose files and shards differ;
- job: `python -m pipeline.run --embeddings` end to end (synthesized, UNTRAINED weights
  unless --weights: speed does not depend on their values); its wall and images/s are
  those of the summary line, the pipeline without the process's start-up.

Files opened are the opens of the inputs (pipeline.storage's one opening of any input,
local or remote; the launcher's look at a shard included), counted by a wrapper in the
measured process. Writes shards.json
and shards.txt (the printed table) into --results. The fastest round of each is reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import results, tables  # noqa: E402
from benchmarks.images import make_images  # noqa: E402

SIZE = (640, 480)
_SUMMARY = re.compile(r"^summary: (\d+) inputs.*; wall ([\d.]+) s, ([\d.]+) images/s", re.MULTILINE)


def pack(paths: list[str], folder: str, per_shard: int) -> list[str]:
    """The photos as tar shards of per_shard members each (img00000.jpg: key img00000)."""
    os.makedirs(folder, exist_ok=True)
    shards = []
    for start in range(0, len(paths), per_shard):
        shard = os.path.join(folder, f"photos-{start // per_shard:05d}.tar")
        with tarfile.open(shard, "w") as tar:
            for path in paths[start : start + per_shard]:
                tar.add(path, arcname=os.path.basename(path))
        shards.append(shard)
    return shards


# ------------------------------------------------------------------- in the measured process


def _count_opens(under: str) -> collections.Counter:
    """Counts every open of an input under `under` from now on, in this process."""
    from pipeline import storage

    opens: collections.Counter = collections.Counter()
    real_open = storage._open_raw

    def counting_open(uri, *args, **kwargs):
        if uri.startswith(under):
            opens[uri] += 1
        return real_open(uri, *args, **kwargs)

    storage._open_raw = counting_open
    return opens


def _read_step(argv: list[str]) -> dict:
    """The job's read step alone over argv's inputs (the launcher's checks included)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.job.options import parse_args
    from pipeline.job.read import shards
    from pipeline.job.summary import counters

    args, beam_args = parse_args([*argv, "--weights", "unused"])  # the launcher wants weights; unread here
    config = shards.InputConfig.from_args(args)
    start = time.perf_counter()
    shards.check_inputs(config)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    read = pipeline | "Inputs" >> shards.ReadInputs(config)
    _ = read["images"] | "Count" >> beam.combiners.Count.Globally()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    found = counters(result)
    images = found.get("images_read", 0)
    return {
        "images": images,
        "failed": found.get("failed_read", 0),
        "wall_s": wall,
        "images_per_s": images / wall,
    }


def _job(argv: list[str]) -> dict:
    """`python -m pipeline.run` in this process: the figures of its summary line."""
    import contextlib
    import io

    from pipeline import run

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run.main(argv)
    match = _SUMMARY.search(out.getvalue())
    if code != 0 or match is None:
        raise RuntimeError(f"pipeline.run exited {code}: {out.getvalue()[-2000:]}")
    return {
        "images": int(match.group(1)),
        "wall_s": float(match.group(2)),
        "images_per_s": float(match.group(3)),
    }


def measured(step: str, under: str, argv: list[str]) -> dict:
    """step ("read" or "job") over argv, with the inputs' opens counted: what one child process reports."""
    opens = _count_opens(under)
    figures = _read_step(argv) if step == "read" else _job(argv)
    return {**figures, "files_opened": sum(opens.values()), "distinct_files_opened": len(opens)}


# ------------------------------------------------------------------- the benchmark


def child(step: str, under: str, argv: list[str]) -> dict:
    """measured() in a fresh process (its own imports, model and memory): its figures."""
    command = [sys.executable, "-m", "benchmarks.shards", "--child", step, under, "--", *argv]
    done = subprocess.run(command, cwd=results.REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def layouts(work: str, images: int, per_shard: int) -> dict[str, dict]:
    """Each layout: the flags that read it, how many files it is, and what to count opens under."""
    photos = make_images(os.path.join(work, "loose"), SIZE, images)
    shards = pack(photos, os.path.join(work, "shards"), per_shard)
    return {
        "loose files": {
            "flags": ["--input", os.path.join(work, "loose", "*.jpg")],
            "files": len(photos),
            "under": os.path.join(work, "loose"),
        },
        f"tar shards ({per_shard} per shard)": {
            "flags": ["--input_format", "webdataset", "--input", os.path.join(work, "shards", "*.tar")],
            "files": len(shards),
            "under": os.path.join(work, "shards"),
        },
    }


def run_benchmark(args: argparse.Namespace, argv: list[str] | None) -> dict:
    out = os.path.abspath(args.out)
    work = os.path.join(out, "inputs")
    weights = args.weights
    if weights is None and not args.read_only:
        from vgg.weights import write_synth

        weights = os.path.join(out, "vgg16_untrained_seed0.npz")
        if not os.path.exists(weights):
            write_synth(weights, fmt="npz", seed=0)
    found = layouts(work, args.images, args.per_shard)
    runs: dict[str, dict[str, list]] = {name: {"read": [], "job": []} for name in found}
    for round_ in range(args.rounds):
        for name, layout in found.items():  # alternating, so a slow spell hits both layouts
            output = os.path.join(out, "job", f"r{round_}-{len(runs[name]['read'])}")
            runs[name]["read"].append(child("read", layout["under"], [*layout["flags"], "--output", output]))
            if not args.read_only:
                flags = [*layout["flags"], "--output", output, "--weights", weights, "--embeddings"]
                runs[name]["job"].append(child("job", layout["under"], flags))
    return {
        **results.stamp("shards", "benchmarks.shards", argv),
        "images": args.images,
        "size": f"{SIZE[0]}x{SIZE[1]}",
        "rounds": args.rounds,
        "layouts": {
            name: {
                "files": found[name]["files"],
                **{
                    step: min(found_runs, key=lambda r: r["wall_s"])
                    for step, found_runs in steps.items()
                    if found_runs
                },
                "rounds": steps,
            }
            for name, steps in runs.items()
        },
    }


def table(result: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a shards.json."""
    with_job = any("job" in layout for layout in result["layouts"].values())
    head = ("layout", "files", "opened", "read: wall s", "images/s")
    head += ("job: wall s", "images/s") if with_job else ()
    body = []
    for name, layout in result["layouts"].items():
        read, job = layout["read"], layout.get("job")
        row = (name, str(layout["files"]), str(read["files_opened"]), f"{read['wall_s']:.2f}")
        row += (f"{read['images_per_s']:.1f}",)
        if with_job:
            row += (f"{job['wall_s']:.1f}", f"{job['images_per_s']:.2f}") if job else ("", "")
        body.append(row)
    note = (
        f"{result['images']} photos of {result['size']}; best of {result['rounds']} round(s); 'opened': "
        "opens of the inputs in the read step, the launcher's included"
    )
    lines = [tables.table(head, body, markdown=markdown), "", note]
    return "\n".join([results.machine_line(result["machine"]), *([""] if markdown else []), *lines])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # --child STEP UNDER -- JOB_ARGS...: one measured process
        step, under, rest = argv[1], argv[2], argv[4:]
        print(json.dumps(measured(step, under, rest)), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench-shards", help="scratch: photos, shards, outputs")
    parser.add_argument("--results", default=results.RESULTS, help="where shards.json and shards.txt go")
    parser.add_argument("--images", type=int, default=256, help="photos, 640x480 JPEGs")
    parser.add_argument("--per_shard", type=int, default=64, help="photos per tar shard")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every measurement; the best is kept")
    parser.add_argument("--weights", default=None, help="weights for the job (default: synthesized, seed 0)")
    parser.add_argument("--read_only", action="store_true", help="measure the read step only, not the job")
    args = parser.parse_args(argv)
    if args.images < 1 or args.per_shard < 1 or args.rounds < 1:
        parser.error("--images, --per_shard and --rounds must be at least 1")
    found = run_benchmark(args, argv)
    text = table(found)
    print(text)
    print("wrote " + ", ".join(map(results.relative, results.write(found, text, args.results, "shards"))))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown of TensorFlow in a measured process
