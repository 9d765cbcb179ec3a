"""Benchmark: --watch's lag from a file's landing to its committed row, and the arrival rate it keeps up with.

    python -m benchmarks.watch                       # writes benchmarks/results/watch.{json,txt}
    .venv-flink/bin/python -m benchmarks.watch --flink   # writes benchmarks/results/watch_flink.{json,txt}
    python -m benchmarks.watch --quick --results /tmp/w --out /tmp/w    # a check, not a figure

Starts `python -m pipeline.run --watch` (Beam's Prism runner here or, with --flink, a local
Flink cluster of two TaskManagers with one slot each, scripts/flink_local.sh, checkpoints
every 10 s; the real model, weights synthesized and UNTRAINED unless --weights) on an
empty folder, then drops 640x480 JPEGs into it at steady rates. Each file is written
beside the folder and renamed in; the rename is its landing. A reader opens the committed
tables every READ_EVERY_S seconds, and a file's lag runs from its landing to the first
read that finds its row.

1. A trickle (--trickle_rate files/s for --trickle_s seconds): the lag's p50, p95 and max.
2. Steps of rising rates (--rates, --step_s each): per step, the lag of the files that
   landed in its first and last thirds and the rate committed. A rate is kept up with when
   the last third's median lag is at most one window and one poll above the first third's:
   a backlog that grows through the step is not kept up with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import images, results, tables
from pipeline.contract import image_id, path_uri
from pipeline.table import snapshot
from vgg.weights import describe_weights

READ_EVERY_S = 0.2
SIZE = (640, 480)
START_TIMEOUT_S = 600  # the launcher's checks, Prism's start and the model's load
DRAIN_TIMEOUT_S = 600
NAME = {False: "watch", True: "watch_flink"}  # the results file, by --flink
UNTRAINED = "weights synthesized (UNTRAINED): the labels are meaningless; the lag and rates are the job's"


def prism_location() -> str:
    """Beam's Prism runner for this Beam (built with Go by scripts/prism_setup.sh where none is given)."""
    if os.environ.get("PRISM_LOCATION"):
        return os.environ["PRISM_LOCATION"]
    env = {**os.environ, "PY": sys.executable}
    setup = ["bash", "scripts/prism_setup.sh"]
    done = subprocess.run(setup, cwd=results.REPO, capture_output=True, text=True, env=env, check=True)
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PRISM_LOCATION=")]
    return line.split("=", 1)[1]


class FlinkCluster:
    """A local Flink cluster for the benchmark: scripts/flink_local.sh on free ports, in `folder`."""

    RUNNER = "FlinkRunner (local cluster: 2 TaskManagers, 1 slot each; checkpoints every 10 s)"

    def __init__(self, folder: str):
        from apache_beam.utils.subprocess_server import pick_port

        rest, rpc = pick_port(None, None)
        self.env = {**os.environ, "FLINK_DIR": folder, "FLINK_REST_PORT": str(rest),
                    "FLINK_RPC_PORT": str(rpc), "FLINK_TASKMANAGERS": "2",
                    "BEAM_SDK_PYTHON": sys.executable}  # fmt: skip
        self.rest = rest

    def _script(self, command: str) -> None:
        script = ["bash", "scripts/flink_local.sh", command]
        subprocess.run(script, cwd=results.REPO, env=self.env, check=True)

    def start(self) -> list[str]:
        """Starts the cluster; the launcher's flags for it."""
        setup = "source scripts/flink_setup.sh && ensure_job_server >&2 && echo $FLINK_JOB_SERVER_JAR"
        done = subprocess.run(["bash", "-c", setup], cwd=results.REPO, env={**self.env, "PY": sys.executable},
                              capture_output=True, text=True, check=True)  # fmt: skip
        jar = done.stdout.strip().splitlines()[-1]
        self._script("start")
        # As configs/flink.yaml runs a job, less its inputs, outputs and fc7 (the Prism run has none).
        return ["--runner=FlinkRunner", f"--flink_master=127.0.0.1:{self.rest}", "--flink_version=1.19",
                f"--flink_job_server_jar={jar}", "--parallelism=2", "--environment_type=PROCESS",
                '--environment_config={"command": "scripts/flink_sdk_worker.sh"}',
                "--sdk_worker_parallelism=1", "--checkpointing_interval=10000"]  # fmt: skip

    def stop(self) -> None:
        self._script("stop")


class Reader:
    """The committed tables, read again every READ_EVERY_S: when each image_id first appeared."""

    def __init__(self, out: str):
        self._out = out
        self._last = -READ_EVERY_S
        self.seen: dict[str, float] = {}

    def read_if_due(self) -> None:
        if time.monotonic() - self._last >= READ_EVERY_S:
            self.read()

    def read(self) -> None:
        if not os.path.isdir(os.path.join(self._out, "predictions")):
            return
        now = self._last = time.monotonic()
        found = snapshot(self._out)
        for table in found.tables.values():
            if table is None:
                continue
            for key in table.to_pyarrow_table(columns=["image_id"]).column("image_id").to_pylist():
                self.seen.setdefault(key, now)


def drop(
    photos: list[str], inbox: str, staging: str, rate: float, duration_s: float, reader: Reader, first: int
):
    """Photos renamed into inbox at `rate` per second for `duration_s`; image_id -> landing (monotonic)."""
    landed: dict[str, float] = {}
    start = time.monotonic()
    count = round(rate * duration_s)
    for n in range(count):
        due = start + n / rate
        while time.monotonic() < due:
            reader.read_if_due()
            time.sleep(min(0.01, max(0.0, due - time.monotonic())))
        name = f"f{first + n:06d}.jpg"
        shutil.copyfile(photos[(first + n) % len(photos)], os.path.join(staging, name))
        target = os.path.join(inbox, name)
        os.rename(os.path.join(staging, name), target)
        landed[image_id(path_uri(target))] = time.monotonic()
    return landed


def wait_committed(reader: Reader, ids, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not set(ids) <= reader.seen.keys():
        if process.poll() is not None:
            raise RuntimeError(f"the watch job exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(set(ids) - reader.seen.keys())} file(s) not committed in {timeout_s} s")
        reader.read()
        time.sleep(READ_EVERY_S)


def lags(landed: dict[str, float], reader: Reader) -> list[float]:
    return [reader.seen[key] - at for key, at in sorted(landed.items(), key=lambda item: item[1])]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    return {"files": len(values), "p50_s": percentile(values, 50), "p95_s": percentile(values, 95),
            "max_s": max(values)}  # fmt: skip


def run(args) -> dict:
    # Absolute: the job spells every local uri absolute, and the image_ids follow the spelling.
    work = os.path.abspath(args.out or tempfile.mkdtemp(prefix="bench-watch-"))
    inbox, staging, out = (os.path.join(work, f"watch-{name}") for name in ("inbox", "staging", "out"))
    for folder in (inbox, staging, out):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    total = round(args.trickle_rate * args.trickle_s + sum(r * args.step_s for r in args.rates))
    photos = images.make_images(os.path.join(work, "watch-photos"), SIZE, min(total, 64))
    weights = args.weights
    if weights is None:
        from vgg.weights import write_synth

        weights = os.path.join(work, "vgg16_untrained.npz")
        if not os.path.exists(weights):
            write_synth(weights, fmt="npz", seed=0)
    argv = [sys.executable, "-m", args.job, "--watch", "--input", f"{inbox}/*.jpg", "--output", out,
            "--weights", weights, "--poll_interval_s", str(args.poll_interval_s),
            "--window_s", str(args.window_s), "--settle_s", "0"]  # fmt: skip
    cluster = FlinkCluster(os.path.join(work, "watch-flink")) if args.flink else None
    try:
        if cluster:
            argv += cluster.start()
        else:
            argv.append(f"--prism_location={prism_location()}")
        log_path = os.path.join(work, "watch-job.log")
        reader = Reader(out)
        with open(log_path, "w") as log:
            process = subprocess.Popen(argv, cwd=results.REPO, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        try:
            # Warm up: one file through the whole job (the model's load, Prism's first bundles).
            warm = drop(photos, inbox, staging, 1.0, 1.0, reader, first=0)
            wait_committed(reader, warm, process, START_TIMEOUT_S)
            first = len(warm)
            trickle = drop(photos, inbox, staging, args.trickle_rate, args.trickle_s, reader, first)
            first += len(trickle)
            wait_committed(reader, trickle, process, DRAIN_TIMEOUT_S)
            steps = []
            for rate in args.rates:
                began = time.monotonic()
                landed = drop(photos, inbox, staging, rate, args.step_s, reader, first)
                first += len(landed)
                wait_committed(reader, landed, process, DRAIN_TIMEOUT_S)
                values = lags(landed, reader)
                third = max(1, len(values) // 3)
                early, late = statistics.median(values[:third]), statistics.median(values[-third:])
                committed_s = max(reader.seen[key] for key in landed) - began
                kept_up = late <= early + args.window_s + args.poll_interval_s
                steps.append({"rate": rate, "files": len(values), "lag_first_third_p50_s": early,
                              "lag_last_third_p50_s": late, "lag_p95_s": percentile(values, 95),
                              "committed_per_s": len(values) / committed_s, "kept_up": kept_up})  # fmt: skip
                if not kept_up:
                    break
        finally:
            process.terminate()  # SIGTERM: the launcher drains
            try:
                process.wait(timeout=DRAIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
            else:
                try:
                    os.killpg(process.pid, 9)  # anything it left behind
                except ProcessLookupError:
                    pass
    finally:
        if cluster:
            cluster.stop()
    kept = [step["rate"] for step in steps if step["kept_up"]]
    return {
        **results.stamp(NAME[args.flink], "benchmarks.watch", args.argv),
        "runner": FlinkCluster.RUNNER if args.flink else "PrismRunner (local)",
        "job": args.job,
        "untrained": describe_weights(weights).untrained,
        "poll_interval_s": args.poll_interval_s,
        "window_s": args.window_s,
        "image_size": list(SIZE),
        "read_every_s": READ_EVERY_S,
        "trickle": {"rate": args.trickle_rate, "seconds": args.trickle_s, **summary(lags(trickle, reader))},
        "steps": steps,
        "highest_rate_kept_up": max(kept) if kept else None,
    }


def table(data: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a watch.json."""
    lines = [results.machine_line(data["machine"])]
    if data.get("untrained"):
        lines.append(UNTRAINED)
    if data["job"] != "pipeline.run":
        lines.append(f"job: {data['job']}, not the job's model: a check, not a figure")
    lines += [
        f"--watch on {data['runner']}, --poll_interval_s {data['poll_interval_s']:g}, --window_s "
        f"{data['window_s']:g}; {data['image_size'][0]}x{data['image_size'][1]} JPEGs; lag from a file's "
        f"rename into the folder to the first read of the committed tables that finds its row (read every "
        f"{data['read_every_s']:g} s)",
        "",
    ]
    t = data["trickle"]
    rows = [(f"trickle, {t['rate']:g} file/s for {t['seconds']:g} s", str(t["files"]), f"{t['p50_s']:.1f}",
             f"{t['p95_s']:.1f}", f"{t['max_s']:.1f}")]  # fmt: skip
    lines += [
        tables.table(("arrivals", "files", "lag p50 s", "lag p95 s", "max s"), rows, markdown=markdown),
        "",
    ]
    rows = [
        (f"{s['rate']:g}", str(s["files"]), f"{s['lag_first_third_p50_s']:.1f}",
         f"{s['lag_last_third_p50_s']:.1f}", f"{s['lag_p95_s']:.1f}", f"{s['committed_per_s']:.2f}",
         "yes" if s["kept_up"] else "no")
        for s in data["steps"]
    ]  # fmt: skip
    head = ("files/s", "files", "lag p50, first third s", "lag p50, last third s", "lag p95 s", "committed/s",
            "kept up")  # fmt: skip
    lines += [tables.table(head, rows, markdown=markdown), ""]
    best = data["highest_rate_kept_up"]
    lines.append(
        f"highest arrival rate kept up with: {best:g} files/s" if best else "no rate was kept up with"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watch", description=__doc__.split("\n")[0])
    parser.add_argument("--trickle_rate", type=float, default=1.0)
    parser.add_argument("--trickle_s", type=float, default=120.0)
    parser.add_argument(
        "--rates", type=lambda text: [float(r) for r in text.split(",")], default=[2.0, 4.0, 8.0, 12.0, 16.0]
    )
    parser.add_argument("--step_s", type=float, default=60.0)
    parser.add_argument("--poll_interval_s", type=float, default=2.0)
    parser.add_argument("--window_s", type=float, default=5.0)
    parser.add_argument("--weights", default=None, help="real weights (default: synthesized, UNTRAINED)")
    parser.add_argument("--job", default="pipeline.run", help=argparse.SUPPRESS)  # tests: a fake model's job
    parser.add_argument("--out", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--results", default=results.RESULTS)
    parser.add_argument("--quick", action="store_true", help="a short run: a check, not a figure")
    parser.add_argument("--flink", action="store_true", help="on a local two-TaskManager Flink cluster")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.trickle_s, args.rates, args.step_s = 6.0, [2.0], 6.0
    data = run(args)
    text = table(data)
    print(text)
    results.write(data, text, args.results, NAME[args.flink])
    print(json.dumps({"highest_rate_kept_up": data["highest_rate_kept_up"], "trickle": data["trickle"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
