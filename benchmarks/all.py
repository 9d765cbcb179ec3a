"""Every committed results file, regenerated in one command, one benchmark after another.

    python -m benchmarks.all                       # about 70 minutes on an idle 2-core (AVX2) machine
    python -m benchmarks.all --only decode,pca     # some of them

Writes benchmarks/results/{decode,decoders,bench,index_recall,pca,near_duplicates,shards,host_path,
memory_budget,decode_load,watch}.{json,txt} and throughput_vs_batch.png, each written by its own benchmark,
untouched. Run it on a machine that is otherwise idle: the figures are rates. The GPU run is its own command
(`python -m benchmarks.gpu`), on a GPU machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks import results

WEIGHTS = "vgg16_untrained.npz"  # in --out; what the bench synthesizes, and near_duplicates reads
# The host path's "before": the last revision before its fixes (issue 20), measured beside the code.
HOST_PATH_BEFORE = "74bd981"
# name -> (module and its arguments, minutes on an idle 2-core AVX2 machine, as the committed runs took)
STEPS = {
    "decode": (["benchmarks.decode"], 1),
    "decoders": (["benchmarks.decoders"], 3),
    "bench": (["benchmarks.bench"], 50),
    "index_recall": (["benchmarks.index_recall", "--suite"], 9),
    "pca": (["benchmarks.pca"], 3),
    "near_duplicates": (["benchmarks.near_duplicates", "--weights", "{out}/" + WEIGHTS], 1),
    "shards": (["benchmarks.shards", "--weights", "{out}/" + WEIGHTS], 6),
    "host_path": (
        ["benchmarks.host_path", "--weights", "{out}/" + WEIGHTS, "--baseline", HOST_PATH_BEFORE],
        12,
    ),
    "memory_budget": (["benchmarks.memory_budget", "--weights", "{out}/" + WEIGHTS], 2),
    "decode_load": (["benchmarks.decode_load", "--weights", "{out}/" + WEIGHTS], 3),
    "watch": (["benchmarks.watch", "--weights", "{out}/" + WEIGHTS], 10),
}
# The steps with a scratch folder.
TAKES_OUT = ("decode", "decoders", "bench", "shards", "memory_budget", "watch")


def argv_for(name: str, out: str, results_dir: str) -> list[str]:
    """The command line of one step."""
    module_args, _ = STEPS[name]
    out, results_dir = results.relative(out), results.relative(results_dir)  # as the results record them
    argv = [sys.executable, "-m", *(a.format(out=out) for a in module_args), "--results", results_dir]
    return argv + ["--out", out] if name in TAKES_OUT else argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench", help="scratch: images, weights, job outputs")
    parser.add_argument("--results", default=results.RESULTS, help="where every results file goes")
    parser.add_argument("--only", default=None, help=f"comma-separated steps, of {', '.join(STEPS)}")
    args = parser.parse_args(argv)
    steps = list(STEPS) if args.only is None else args.only.split(",")
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}")
    needs_weights = [step for step in steps if "{out}/" + WEIGHTS in STEPS[step][0]]
    if needs_weights and not os.path.exists(os.path.join(args.out, WEIGHTS)):
        os.makedirs(args.out, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "vgg.weights", "synth", "--format", "npz", "--seed", "0", "--out",
             os.path.join(args.out, WEIGHTS)],
            check=True, cwd=results.REPO,
        )  # fmt: skip
    print(f"about {sum(STEPS[s][1] for s in steps)} minutes on an idle 2-core machine: {', '.join(steps)}")
    took, failed = {}, []
    for name in steps:
        print(f"\n==> {name}: python {' '.join(argv_for(name, args.out, args.results)[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(argv_for(name, args.out, args.results), cwd=results.REPO).returncode != 0:
            failed.append(name)
        took[name] = time.perf_counter() - start
    print("\n" + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in took.items()))
    if failed:
        print(f"error: {', '.join(failed)} failed; the other results are written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
