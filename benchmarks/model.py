"""The bare model: images/s on preprocessed uint8 batches per batch size, its GFLOP/s and device memory.

    python -m benchmarks.model --weights W --batch_sizes 1,8,16 --precision float32 --seconds 6

Prints one JSON line. The benchmarks run it in a child process, so that they never hold
TensorFlow or a model themselves (Linux counts a parent's resident memory at fork into
the child's peak, and a GPU would be initialised in the wrong process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from vgg.architecture import CONV_BLOCKS, IMAGE_SIZE, WEIGHT_SHAPES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def flops_per_image() -> int:
    """Multiply-adds of one 224×224 forward pass, counted twice (a multiply and an add).

    Each conv layer: output pixels × 3·3·in·out; the image halves after each block (pool).
    Each dense layer: in·out. Biases, ReLU, pooling and softmax are left out (< 0.1%).
    """
    macs, side = 0, IMAGE_SIZE
    for block in CONV_BLOCKS:
        for name, _ in block:
            kh, kw, cin, cout = WEIGHT_SHAPES[name][0]
            macs += side * side * kh * kw * cin * cout
        side //= 2
    for name in ("fc6", "fc7", "fc8"):
        cin, cout = WEIGHT_SHAPES[name][0]
        macs += cin * cout
    return 2 * macs


FLOPS_PER_IMAGE = flops_per_image()


def _peak_device_memory(tf) -> dict:
    """Functions that reset and read the first GPU's peak memory (GiB); no-ops (None) on CPU."""
    if not tf.config.list_logical_devices("GPU"):
        return {"reset": lambda: None, "read": lambda: None}
    return {
        "reset": lambda: tf.config.experimental.reset_memory_stats("GPU:0"),
        "read": lambda: tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30,
    }


def bench_model(
    weights: str,
    batch_sizes: list[int],
    precision: str,
    seconds: float,
    jit: bool = False,
    conv_batches: tuple[str, ...] = ("auto", "whole"),
) -> dict:
    """Images/s per batch size (at least two calls each, after one warm-up call), plus load time.

    Each batch size runs with each of conv_batches ("auto": the Predictor's default, as the
    job runs it; "whole": the convolutions on the whole batch; or a number of images), one
    model at a time; a batch size's rate is the fastest of them (the bare model at its best),
    and each one's rates are kept. Also the peak GPU memory per batch size when the model
    runs on a GPU (None on CPU).
    """
    import gc

    import numpy as np
    import tensorflow as tf

    from vgg.inference import Predictor

    memory = _peak_device_memory(tf)
    rng = np.random.default_rng(0)
    by_conv: dict[str, dict[int, float | None]] = {}
    peaks: dict[int, float | None] = {}
    load_s, device, conv_labels = None, None, {}
    for conv in conv_batches:
        start = time.perf_counter()
        setting = {"whole": None, "auto": "auto"}[conv] if conv in ("whole", "auto") else int(conv)
        predictor = Predictor(weights, precision=precision, jit=jit, conv_batch=setting)
        load_s = time.perf_counter() - start if load_s is None else min(load_s, time.perf_counter() - start)
        device = predictor.device
        label = "whole" if predictor.conv_batch is None else str(predictor.conv_batch)
        if label in conv_labels.values():  # "auto" is "whole" on a GPU: measured once
            continue
        conv_labels[conv] = label
        rates = by_conv[conv] = {}
        for batch in batch_sizes:
            images = rng.integers(0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            memory["reset"]()
            predictor(images)  # warm-up: the first call traces (and on a GPU autotunes) the graph
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or done < 2 * batch:
                predictor(images)  # returns NumPy arrays: each call waits for the device
                done += batch
            rates[batch] = done / (time.perf_counter() - start)
            peak = memory["read"]()
            peaks[batch] = peak if peaks.get(batch) is None else max(peaks[batch], peak or 0.0)
            if predictor.max_batch_size and predictor.max_batch_size < batch:
                rates[batch] = None  # out of device memory: what ran was smaller batches
        del predictor
        gc.collect()
    rates = {b: max((r[b] for r in by_conv.values() if r[b]), default=None) for b in batch_sizes}
    measured = [r for r in rates.values() if r]
    best = max(measured) if measured else 0.0
    return {
        "precision": precision,
        "jit": jit,
        "load_s": load_s,
        "images_per_s": rates,
        "by_conv_batch": {conv_labels[c]: r for c, r in by_conv.items()},
        "best": best,
        "gflop_per_s": best * FLOPS_PER_IMAGE / 1e9,
        "peak_device_memory_gib": peaks if any(p is not None for p in peaks.values()) else None,
        "device": device,
    }


def fastest(runs: list[dict]) -> dict:
    """Several bench_model results of one precision as one: per batch size the fastest rate
    (noise on a machine only ever slows a run), the shortest load; each run's rates kept."""
    sizes = runs[0]["images_per_s"]
    rates = {
        b: max((r["images_per_s"][b] for r in runs if r["images_per_s"][b]), default=None) for b in sizes
    }
    best = max((r for r in rates.values() if r), default=0.0)
    peaks = [r["peak_device_memory_gib"] for r in runs if r["peak_device_memory_gib"] is not None]
    by_conv = {
        conv: {b: max((r["by_conv_batch"][conv][b] or 0.0 for r in runs), default=0.0) or None for b in sizes}
        for conv in runs[0].get("by_conv_batch", {})
    }
    return {
        **runs[0],
        "load_s": min(r["load_s"] for r in runs),
        "images_per_s": rates,
        "by_conv_batch": by_conv,
        "best": best,
        "gflop_per_s": best * FLOPS_PER_IMAGE / 1e9,
        "peak_device_memory_gib": {b: max(p[b] or 0.0 for p in peaks) for b in sizes} if peaks else None,
        "rounds": [r["images_per_s"] for r in runs],
    }


def in_subprocess(
    weights: str,
    batch_sizes: list[int],
    precision: str,
    seconds: float,
    *,
    jit: bool = False,
    timeout_s: float | None = None,
) -> dict:
    """bench_model in a fresh Python (see the module's docstring); batch sizes come back as ints."""
    argv = [sys.executable, "-m", "benchmarks.model", "--weights", weights, "--precision", precision,
            "--batch_sizes", ",".join(map(str, batch_sizes)), "--seconds", str(seconds)]  # fmt: skip
    done = subprocess.run(
        [*argv, "--jit"] if jit else argv,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare-model run ({precision}) failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["images_per_s"] = {int(b): r for b, r in result["images_per_s"].items()}
    result["by_conv_batch"] = {
        conv: {int(b): r for b, r in rates.items()} for conv, rates in result["by_conv_batch"].items()
    }
    if result["peak_device_memory_gib"] is not None:
        result["peak_device_memory_gib"] = {int(b): m for b, m in result["peak_device_memory_gib"].items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batch_sizes", default="1,8,16,32,64")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--seconds", type=float, default=6.0, help="timing window per batch size")
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(json.dumps(bench_model(args.weights, sizes, args.precision, args.seconds, args.jit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
