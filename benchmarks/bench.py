"""Benchmark: the pipeline end to end against the bare model and the stock Beam peer, in one run.

    python -m benchmarks.bench --out output/bench            # the full run (about 17 minutes)
    python -m benchmarks.bench --out /tmp/b --images 24 --quick

Measures (a) the bare model on preprocessed uint8 batches over several batch sizes,
(b) the peer: Beam RunInference with its TensorFlow model handler and
keras.applications.VGG16, Keras' load_img + preprocess_input in a beam.Map,
(c) `python -m pipeline.run --embeddings` end to end, start-up separated from the
steady rate by running two input sizes, (d) decode+preprocess alone on one core,
all on 640x480 and 12-megapixel JPEGs, plus peak RSS and reduced precision. Writes
bench.json, throughput_vs_batch.png and prints one table. Weights are synthesized
(UNTRAINED) unless --weights is given: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZES = {"640x480": (640, 480), "12mp": (4032, 3024)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(folder: str, size: tuple[int, int], count: int) -> list[str]:
    """JPEGs (quality 90) made from the bundled photos: resized, shifted crops, so each differs."""
    os.makedirs(folder, exist_ok=True)
    sources = sorted(
        os.path.join(REPO, "samples", n) for n in os.listdir(os.path.join(REPO, "samples"))
        if n.endswith((".jpg", ".png"))
    )  # fmt: skip
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"img{i:05d}.jpg")
        if not os.path.exists(path):
            with Image.open(sources[i % len(sources)]) as source:
                rgb = source.convert("RGB")
            scale = max(size[0] / rgb.width, size[1] / rgb.height) * (1.0 + 0.01 * (i % 7))
            big = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.BICUBIC)
            left, top = (big.width - size[0]) // 2, (big.height - size[1]) // 2
            big.crop((left, top, left + size[0], top + size[1])).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def machine() -> dict:
    """This machine, without importing TensorFlow here (see bench_model_in_subprocess)."""
    from importlib.metadata import version

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "tensorflow": version("tensorflow"),
        "apache_beam": version("apache-beam"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 CPUs)"),
        "python": platform.python_version(),
    }


def bench_decode(paths: list[str], resize: str = "squash") -> float:
    """Images/s of vgg.preprocess.decode_image on one thread (one core)."""
    from vgg.preprocess import decode_image

    blobs = [open(p, "rb").read() for p in paths]
    decode_image(blobs[0], resize=resize)
    start = time.perf_counter()
    for blob in blobs:
        decode_image(blob, resize=resize)
    return len(blobs) / (time.perf_counter() - start)


def bench_model_in_subprocess(weights: str, batch_sizes: list[int], precision: str, seconds: float) -> dict:
    """bench_model in a child process, so that this process never holds TensorFlow or a model.

    The jobs below are forked from this process, and Linux counts a parent's resident
    memory at fork time into the child's peak RSS: a small parent keeps that figure honest.
    """
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--model_job", weights, ",".join(map(str, batch_sizes)),
         precision, str(seconds)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["images_per_s"] = {int(b): r for b, r in result["images_per_s"].items()}
    return result


def bench_model(weights: str, batch_sizes: list[int], precision: str, seconds: float) -> dict:
    """Bare model images/s per batch size on preprocessed uint8 batches, plus load time."""
    from vgg.inference import Predictor

    start = time.perf_counter()
    predictor = Predictor(weights, precision=precision)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    rates = {}
    for batch in batch_sizes:
        images = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        predictor(images)  # warm-up (first call traces the graph)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 2 * batch:
            predictor(images)
            done += batch
        rates[batch] = done / (time.perf_counter() - start)
    return {
        "load_s": load_s,
        "images_per_s": rates,
        "best": max(rates.values()),
        "device": predictor.device,
    }


def timed_job(argv: list[str]) -> tuple[float, float]:
    """Runs a command; returns (wall seconds, peak RSS of the process in GiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def ours(folder: str, out: str, weights: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.run", "--input", f"{folder}/*.jpg", "--output", out,
            "--weights", weights, "--embeddings", *extra]  # fmt: skip


def peer(folder: str, out: str, h5: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench", "--peer_job", folder, out, h5]


def steady(runs: list[dict], n_small: int, n_large: int) -> dict:
    """Start-up and steady rate from two input sizes: rate = extra images / extra time.

    Each size keeps its fastest wall over the rounds: noise on a shared machine only ever
    adds time, and the rate is a difference of two walls, so a slow outlier in either
    would move it by several percent.
    """
    wall_small = min(run["wall_small_s"] for run in runs)
    wall_large = min(run["wall_large_s"] for run in runs)
    if wall_large <= wall_small:
        raise RuntimeError(
            f"the {n_large}-image run ({wall_large:.1f} s) was not slower than the {n_small}-image run "
            f"({wall_small:.1f} s): use more --images, on a machine that is otherwise idle"
        )
    rate = (n_large - n_small) / (wall_large - wall_small)
    return {
        "wall_small_s": wall_small,
        "wall_large_s": wall_large,
        "rounds": runs,
        "steady_images_per_s": rate,
        "startup_s": max(wall_small - n_small / rate, 0.0),
        "peak_rss_gib": max(run["peak_rss_gib"] for run in runs),
    }


def two_sizes(job, small: str, large: str, out: str) -> dict:
    """One round of a job: its walls and peak RSS on the small and the large input."""
    wall_small, rss_small = timed_job(job(small, out + "-small"))
    wall_large, rss_large = timed_job(job(large, out + "-large"))
    return {"wall_small_s": wall_small, "wall_large_s": wall_large, "peak_rss_gib": max(rss_small, rss_large)}


def run_peer_job(folder: str, out: str, h5: str) -> None:
    """What a user would write with stock parts (Beam's TF handler + keras.applications.VGG16)."""
    import apache_beam as beam
    import keras
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.tensorflow_inference import ModelType, TFModelHandlerNumpy

    def load(path):
        from keras.applications.vgg16 import preprocess_input

        image = keras.utils.load_img(path, target_size=(224, 224))
        return preprocess_input(keras.utils.img_to_array(image))

    def top5(result):
        probs = np.asarray(result.inference)
        best = np.argsort(-probs)[:5]
        return json.dumps({"classes": best.tolist(), "scores": probs[best].tolist()})

    handler = TFModelHandlerNumpy(
        h5,
        model_type=ModelType.SAVED_WEIGHTS,
        create_model_fn=lambda: keras.applications.VGG16(weights=None),
        max_batch_size=32,
    )
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jpg"))
    with beam.Pipeline() as pipeline:
        (
            pipeline
            | beam.Create(files)
            | "Preprocess" >> beam.Map(load)
            | RunInference(handler)
            | beam.Map(top5)
            | beam.io.WriteToText(os.path.join(out, "peer"))
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="output/bench")
    parser.add_argument("--weights", help="weights file (default: synthesized, UNTRAINED)")
    parser.add_argument("--images", type=int, default=240, help="images in the large run per size")
    parser.add_argument("--batch_sizes", default="1,8,16,32,64")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the fastest wall of each size is kept"
    )
    parser.add_argument("--quick", action="store_true", help="640x480 only, float32 only")
    parser.add_argument("--peer_job", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--model_job", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_job:
        run_peer_job(*args.peer_job)
        return 0
    if args.model_job:
        weights, sizes, precision, seconds = args.model_job
        result = bench_model(weights, [int(b) for b in sizes.split(",")], precision, float(seconds))
        print(json.dumps(result))
        return 0
    from benchmarks.report import report

    os.makedirs(args.out, exist_ok=True)
    weights = args.weights or os.path.join(args.out, "vgg16_untrained.npz")
    tool = [sys.executable, "-m", "vgg.weights"]  # in children: this process stays small
    if not args.weights and not os.path.exists(weights):
        subprocess.run([*tool, "synth", "--format", "npz", "--seed", "0", "--out", weights], check=True)
    h5 = os.path.join(args.out, "vgg16_keras.h5")
    if not os.path.exists(h5):  # the peer loads Keras' format
        subprocess.run([*tool, "convert", weights, h5], check=True)
    results = {"machine": machine(), "weights": os.path.abspath(weights), "sizes": {}}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = ["float32"] if args.quick else ["float32", "bfloat16"]
    results["model"] = {p: bench_model_in_subprocess(weights, batch_sizes, p, seconds=6) for p in precisions}
    n_large = args.images
    for name, size in SIZES.items():
        if args.quick and name != "640x480":
            continue
        count = n_large if name == "640x480" else max(n_large // 2, 16)
        small_count = max(count // 4, 8)
        folder = os.path.join(args.out, "images", name)
        paths = make_images(folder, size, count)
        small = folder + "-small"
        os.makedirs(small, exist_ok=True)
        for path in paths[:small_count]:
            target = os.path.join(small, os.path.basename(path))
            if not os.path.exists(target):
                os.link(path, target)
        entry = {"decode_images_per_s_per_core": bench_decode(paths[:40])}
        jobs = {"ours": lambda d, o: ours(d, o, weights), "peer": lambda d, o: peer(d, o, h5)}
        if "bfloat16" in precisions:
            jobs["ours_bfloat16"] = lambda d, o: ours(d, o, weights, "--precision", "bfloat16")
        runs: dict[str, list[dict]] = {label: [] for label in jobs}
        for r in range(args.rounds):  # interleaved: ours, peer, ours bf16, ours, peer, ...
            for label, job in jobs.items():
                out = os.path.join(args.out, f"run-{name}-{label}-{r}")
                runs[label].append(two_sizes(job, small, folder, out))
        for label in jobs:
            entry[label] = steady(runs[label], small_count, count)
        results["sizes"][name] = entry
    if not args.quick:
        folder = os.path.join(args.out, "images", "640x480")
        threads = ("--direct_running_mode=multi_threading", "--direct_num_workers={}")
        results["memory"] = {
            f"threads_{n}": timed_job(
                ours(folder + "-small", os.path.join(args.out, f"mem{n}"), weights,
                     threads[0], threads[1].format(n))
            )[1]
            for n in (1, 4)
        }  # fmt: skip
    with open(os.path.join(args.out, "bench.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(report(results, os.path.join(args.out, "throughput_vs_batch.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
