"""The GPU run, ready to go: one command, within 8 minutes, on a machine with an NVIDIA GPU.

    python -m benchmarks.gpu                   # writes benchmarks/results/gpu.{json,txt}
    python -m benchmarks.gpu --tiny_cpu --results /tmp/g    # every step, tiny, on the CPU (a check)

On a machine without an NVIDIA GPU it says so and exits 0 at once. With one, it installs
the 'gpu' extra when TensorFlow's CUDA libraries are missing and the 'gpu-decode' extra when
NVIDIA DALI is, then measures, each step in its own process and within a fixed time budget
(a step that would not fit is recorded as skipped, never left half done):
1. the bare model in float32, float16 and bfloat16 at batch sizes 32-256: images/s,
   GFLOP/s and TensorFlow's peak GPU memory per batch size;
2. decoding alone, 640×480 and 12 MP JPEGs: images/s of one DALI pipeline on the GPU
   (vgg.dali, what `--decode_device gpu` runs) against one sandboxed CPU decoder process,
   i.e. one core (what `--decode_device cpu` runs per decoder thread);
3. the job end to end (`python -m pipeline.run`, which sends uint8 batches to the device)
   with `--decode_isolation none` and the default `subprocess`, each with and without
   `--jit`, and with `--decode_device gpu`, at the GPU config's precision and batch size
   (configs/dataflow_gpu.yaml): steady images/s and start-up from two input sizes, the
   process tree's peak RSS and the GPU's peak memory (nvidia-smi, sampled).
With --tiny_cpu, step 2 runs DALI's pipeline on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time

from benchmarks import images, model, results, tables
from benchmarks.bench import input_folders, prepare_weights, steady, timed_job
from vgg import hardware

BUDGET_S = 450.0  # the whole command, installing included: 8 minutes less a margin
PRECISIONS = ("float32", "float16", "bfloat16")
BATCH_SIZES = (32, 64, 128, 256)
MODEL_SECONDS = 2.0  # timing window per batch size, after a warm-up call
CONFIGS = {  # label -> extra flags of the job
    "subprocess": [],
    "subprocess, --decode_device gpu": ["--decode_device", "gpu"],
    "subprocess, --jit": ["--jit"],
    "none": ["--decode_isolation", "none"],
    "none, --jit": ["--decode_isolation", "none", "--jit"],
}
JOB_PRECISION, JOB_BATCH = "float16", 64  # as configs/dataflow_gpu.yaml runs on a T4
IMAGES = (256, 1536)  # small and large input of the job (640×480 JPEGs)
DECODE_SIZES = {"640x480": (640, 480), "12mp": (4032, 3024)}
DECODE_IMAGES = {"640x480": 128, "12mp": 16}  # one DALI batch of each size
DECODE_SECONDS = 3.0  # timing window per decoder and size, after a warm-up call
DALI_DISTRIBUTION = "nvidia-dali-cuda120"  # what the 'gpu-decode' extra installs
MIN_STEP_S = {"model": 45.0, "decode": 30.0, "job": 60.0}  # a step starts only with this much budget left
TINY = {"batch_sizes": (1,), "seconds": 0.0, "images": (2, 4), "precision": "float32", "batch": 2,
        "decode_images": 2}  # fmt: skip


def missing_cuda_packages(
    requires: list[str] | None = None, installed=importlib.metadata.version
) -> list[str]:
    """The distributions `tensorflow[and-cuda]` needs that are not installed (the 'gpu' extra)."""
    from packaging.requirements import Requirement

    if requires is None:
        requires = importlib.metadata.requires("tensorflow") or []
    missing = []
    for line in requires:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or not marker.evaluate({"extra": "and-cuda"}) or marker.evaluate({"extra": ""}):
            continue
        try:
            installed(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement.name)
    return missing


def dali_missing(installed=importlib.metadata.version) -> bool:
    """Whether NVIDIA DALI (the 'gpu-decode' extra) is not installed."""
    try:
        installed(DALI_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def ensure_gpu_extra(timeout_s: float) -> dict:
    """Installs the 'gpu' extra when CUDA libraries are missing, the 'gpu-decode' one when DALI is."""
    missing = missing_cuda_packages()
    extras = (["gpu"] if missing else []) + (["gpu-decode"] if dali_missing() else [])
    if not extras:
        return {"installed_now": False, "seconds": 0.0}
    why = [f"{len(missing)} CUDA packages missing, e.g. {missing[0]}"] if missing else []
    why += [f"{DALI_DISTRIBUTION} missing"] if "gpu-decode" in extras else []
    print(f"installing the {' and '.join(map(repr, extras))} extra ({'; '.join(why)}) ...", flush=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{results.REPO}[{','.join(extras)}]"],
        check=True,
        timeout=timeout_s,
    )
    return {"installed_now": True, "extras": extras, "seconds": time.perf_counter() - start}


def tensorflow_gpus() -> int:
    """GPUs TensorFlow sees, asked in a child process (this one never imports TensorFlow)."""
    done = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.split()
    return int(lines[-1]) if done.returncode == 0 and lines else 0


def _rate(call, data: list[bytes], seconds: float) -> float:
    """Images/s of call(data), repeated until `seconds` have passed (at least once)."""
    done, start = 0, time.perf_counter()
    while True:
        call(data)
        done += len(data)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def _one_by_one(decoder, data: list[bytes]) -> list:
    return [decoder(one) for one in data]


def decode_rates(files: dict[str, list[str]], device: str, seconds: float) -> dict:
    """Per size: images/s of one DALI pipeline on `device` and of one sandboxed decoder process.

    The DALI pipeline decodes all of a size's files as one batch (vgg.dali.DaliDecoder with the
    job's one thread, as --decode_device gpu runs it); the sandbox decodes them one at a time in
    its child process (vgg.sandbox, as --decode_device cpu runs each decoder thread), so its
    rate is one core's. Both resize with "squash" and start with a warm-up call.
    """
    from vgg.dali import DaliDecoder
    from vgg.sandbox import IsolatedDecoder

    found = {}
    for label, paths in files.items():
        data = []
        for path in paths:
            with open(path, "rb") as handle:
                data.append(handle.read())
        dali = DaliDecoder(device=device, batch_size=len(data), threads=1)
        taken = sum(image is not None for image in dali(data))
        dali_rate = _rate(dali, data, seconds)
        dali.close()
        sandbox = IsolatedDecoder()
        try:
            sandbox(data[0])
            sandbox_rate = _rate(functools.partial(_one_by_one, sandbox), data, seconds)
        finally:
            sandbox.close()
        found[label] = {
            "images": len(data),
            "dali_taken": taken,
            "dali_images_per_s": dali_rate,
            "sandbox_images_per_s": sandbox_rate,
        }
    return {"device": device, "sizes": found}


def decode_in_subprocess(files: dict[str, list[str]], device: str, seconds: float, timeout_s) -> dict:
    """decode_rates in a fresh Python, so that DALI's GPU memory is gone before the jobs run."""
    code = (
        "import json, sys\n"
        "from benchmarks.gpu import decode_rates\n"
        "print(json.dumps(decode_rates(json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(files), device, str(seconds)],
        cwd=results.REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the decode run ({device}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class GpuMemorySampler:
    """The GPU's used memory (nvidia-smi, MiB) sampled on a thread; the peak above the starting level."""

    def __init__(self, index: int, interval_s: float = 0.5):
        self.index, self.interval_s = index, interval_s
        self.base = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        done = subprocess.run(
            ["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout.split() else 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_gib(self) -> float:
        return (self.peak - self.base) / 1024


def job(folder: str, out: str, weights: str, flags: list[str], precision: str, batch: int) -> list[str]:
    """Our job on the JPEGs of folder, as a user runs it on a GPU machine."""
    return [sys.executable, "-m", "pipeline.run", "--input", f"{folder}/*.jpg", "--output", out,
            "--weights", weights, "--embeddings", "--precision", precision,
            "--batch_size", str(batch), *flags]  # fmt: skip


class Budget:
    """Seconds left of the command's budget, and whether a step still fits."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, step: str, tiny: bool) -> bool:
        return tiny or self.left() >= MIN_STEP_S[step]


def run_job_config(flags, small, large, out, weights, precision, batch, gpu_index, counts, time_left) -> dict:
    """One job configuration on both input sizes: steady rate, start-up, tree RSS, GPU memory.

    time_left() is each run's time limit (None: none). When the large run was not slower
    than the small one (a tiny run on a busy machine), the rate and start-up are None and
    a note says why; the walls and memory are kept.
    """
    runs, gpu_peaks = [], []
    for size, folder in (("small", small), ("large", large)):
        argv = job(folder, f"{out}-{size}", weights, flags, precision, batch)
        if gpu_index is None:
            runs.append(timed_job(argv, time_left()))
        else:
            with GpuMemorySampler(gpu_index) as gpu_memory:
                runs.append(timed_job(argv, time_left()))
            gpu_peaks.append(gpu_memory.peak_gib())
    one_round = {
        "wall_small_s": runs[0]["wall_s"],
        "wall_large_s": runs[1]["wall_s"],
        "memory": max((r["memory"] for r in runs), key=lambda m: m["total_peak_rss_gib"]),
    }
    try:
        result = steady([one_round], *counts)
    except RuntimeError as error:
        result = {**one_round, "steady_images_per_s": None, "startup_s": None, "note": str(error)}
    result["peak_gpu_memory_gib"] = max(gpu_peaks) if gpu_peaks else None
    return result


def measure(args, budget: Budget, gpu_index: int | None, install: dict | None) -> dict:
    """Every step that fits in the budget; the rest marked skipped, a step that fails marked failed."""
    tiny = args.tiny_cpu
    weights, _, weights_info = prepare_weights(args.out, None, for_peers=False)
    batch_sizes = TINY["batch_sizes"] if tiny else BATCH_SIZES
    seconds = TINY["seconds"] if tiny else MODEL_SECONDS
    bare = {}
    for precision in PRECISIONS:
        if not budget.fits("model", tiny):
            bare[precision] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        try:
            bare[precision] = model.in_subprocess(
                weights, list(batch_sizes), precision, seconds, timeout_s=None if tiny else budget.left()
            )
        except subprocess.TimeoutExpired:
            bare[precision] = {"skipped": "time budget ran out during the run"}
        except RuntimeError as error:  # e.g. a precision this device cannot run: the others still can
            bare[precision] = {"failed": str(error).splitlines()[-1]}
    counts = TINY["images"] if tiny else IMAGES
    precision, batch = (TINY["precision"], TINY["batch"]) if tiny else (JOB_PRECISION, JOB_BATCH)
    small, large, _ = input_folders(args.out, "gpu-640x480", (640, 480), counts[1], counts[0])
    if not budget.fits("decode", tiny):
        decode = {"skipped": f"time budget ({budget.left():.0f} s left)"}
    else:
        files = {
            label: images.make_images(
                os.path.join(args.out, "images", f"gpu-decode-{label}"),
                size,
                TINY["decode_images"] if tiny else DECODE_IMAGES[label],
            )
            for label, size in DECODE_SIZES.items()
        }
        try:
            decode = decode_in_subprocess(
                files, "cpu" if tiny else "gpu", 0.0 if tiny else DECODE_SECONDS,
                timeout_s=None if tiny else budget.left(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            decode = {"skipped": "time budget ran out during the run"}
        except RuntimeError as error:
            decode = {"failed": str(error).splitlines()[-1]}
    jobs = {}
    for label, flags in CONFIGS.items():
        if not budget.fits("job", tiny):
            jobs[label] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
            continue
        out = os.path.join(args.out, f"gpu-run-{label.replace(', --', '-')}")
        try:
            jobs[label] = run_job_config(
                flags, small, large, out, weights, precision, batch, gpu_index, counts,
                time_left=lambda: None if tiny else max(budget.left(), 1.0),
            )  # fmt: skip
        except RuntimeError as error:
            jobs[label] = {"failed": str(error).splitlines()[-1]}
    device = next((b["device"] for b in bare.values() if "device" in b), None)
    return {
        **results.stamp("gpu", "benchmarks.gpu", args.argv, device=device),
        "weights": weights_info,
        "tiny_cpu": tiny,
        "budget_s": args.budget_s,
        "gpu_extra": install,
        "model": bare,
        "decode": decode,
        "job": {
            "precision": precision,
            "batch_size": batch,
            "images": {"small": counts[0], "large": counts[1]},
            "configs": jobs,
        },  # fmt: skip
    }


def _not_run(entry: dict) -> str:
    return f"skipped: {entry['skipped']}" if "skipped" in entry else f"failed: {entry['failed']}"


def table(result: dict, markdown: bool = False) -> str:
    """The GPU run's tables: the bare model per precision and batch size, then the job per configuration."""
    model_rows = []
    for precision, entry in result["model"].items():
        if "device" not in entry:
            model_rows.append((precision, _not_run(entry), "", "", ""))
            continue
        peaks = entry["peak_device_memory_gib"] or {}
        for batch, rate in entry["images_per_s"].items():
            peak = peaks.get(batch)
            model_rows.append(
                (precision, str(batch), f"{rate:.1f}" if rate else "out of memory",
                 f"{rate * model.FLOPS_PER_IMAGE / 1e12:.1f}" if rate else "",
                 f"{peak:.2f}" if peak is not None else "n/a")
            )  # fmt: skip
    decode = result["decode"]
    if "sizes" in decode:
        decode_rows = [
            (label, str(e["images"]), str(e["dali_taken"]), f"{e['dali_images_per_s']:.0f}",
             f"{e['sandbox_images_per_s']:.0f}", f"{e['dali_images_per_s'] / e['sandbox_images_per_s']:.1f}")
            for label, e in decode["sizes"].items()
        ]  # fmt: skip
    else:
        decode_rows = [("", _not_run(decode), "", "", "", "")]
    job_rows = []
    for label, entry in result["job"]["configs"].items():
        if "memory" not in entry:
            job_rows.append((label, _not_run(entry), "", "", ""))
            continue
        gpu, rate = entry["peak_gpu_memory_gib"], entry["steady_images_per_s"]
        job_rows.append(
            (label, f"{rate:.1f}" if rate else "n/a", f"{entry['startup_s']:.1f}" if rate else "n/a",
             f"{entry['memory']['total_peak_rss_gib']:.2f}", f"{gpu:.2f}" if gpu is not None else "n/a")
        )  # fmt: skip
    j = result["job"]
    lines = [
        "Bare model (uint8 batches in, probabilities and fc7 out):",
        "",
        tables.table(
            ("precision", "batch", "img/s", "TFLOP/s", "peak GPU GiB"), model_rows, markdown=markdown
        ),
        "",
        f"Decoding alone (resize squash): one DALI pipeline on the {decode.get('device', 'gpu').upper()} "
        "against one sandboxed decoder process (one core):",
        "",
        tables.table(
            ("JPEGs", "images", "DALI took", "DALI img/s", "sandbox img/s", "DALI / one core"),
            decode_rows,
            markdown=markdown,
        ),
        "",
        f"Job end to end ({j['precision']}, batch {j['batch_size']}, {j['images']['small']} and "
        f"{j['images']['large']} 640×480 JPEGs), by --decode_isolation, --jit and --decode_device:",
        "",
        tables.table(
            ("configuration", "img/s", "start-up s", "tree peak GiB", "peak GPU GiB"),
            job_rows,
            markdown=markdown,
        ),  # fmt: skip
    ]
    notes = [f"{label}: {e['note']}" for label, e in result["job"]["configs"].items() if e.get("note")]
    lines += ["", *notes] if notes else []
    head = [results.machine_line(result["machine"])]
    if result["tiny_cpu"]:
        head.append("TINY CPU RUN (--tiny_cpu): a check of the steps, not a figure")
    return "\n".join([*head, "", *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench", help="scratch: images, weights, job outputs")
    parser.add_argument("--results", default=results.RESULTS, help="where gpu.json and gpu.txt go")
    parser.add_argument("--budget_s", type=float, default=BUDGET_S, help="the whole command's time budget")
    parser.add_argument(
        "--tiny_cpu", action="store_true", help="every step with tiny sizes on the CPU (checks the command)"
    )
    args = parser.parse_args(argv)
    args.argv = argv
    args.out = os.path.abspath(args.out)  # the jobs run in the repository root
    budget = Budget(args.budget_s)
    gpu_index = install = None
    if args.tiny_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # the children run on the CPU even on a GPU machine
    else:
        gpus = hardware.visible_gpus(
            hardware.parse_gpus(hardware.query_gpus()), os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        if not gpus:
            print("no NVIDIA GPU here (nvidia-smi lists none): nothing to measure; run this on a GPU machine")
            return 0
        gpu_index = gpus[0].index
        try:
            install = ensure_gpu_extra(timeout_s=max(budget.left() - 240, 60))
        except (subprocess.SubprocessError, OSError) as error:
            print(
                f"error: installing the GPU extras failed ({error}); install them with "
                "pip install -e '.[gpu,gpu-decode]'"
            )
            return 1
        if tensorflow_gpus() == 0:
            print(
                f"error: nvidia-smi lists {gpus[0].name} but TensorFlow sees no GPU: check the driver "
                "against TensorFlow's CUDA version (https://www.tensorflow.org/install/pip)"
            )
            return 1
    result = measure(args, budget, gpu_index, install)
    text = table(result)
    print(text)
    paths = results.write(result, text, args.results, "gpu")
    print("wrote " + ", ".join(results.relative(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
