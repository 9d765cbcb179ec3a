"""Benchmark: the bare model while a decoder takes its share of the same cores, two ways of running it.

    python -m benchmarks.decode_load                  # writes benchmarks/results/decode_load.{json,txt}
    python -m benchmarks.decode_load --seconds 3 --results /tmp/d    # a check, not a figure

Why the job stays below L at 12 MP on a CPU. L = 1/(1/a + 1/(n·d)) counts each photo's
decode once, shared by the n cores. Each configuration runs in a fresh process, where the
model labels 16-image batches for --seconds, first alone, then with a decoder process
beside it. The decoder decodes the bench's 12 MP JPEGs (one thread, not pinned) at the
rate the model labelled alone, as the job's decoder keeps pace with its model.

- "one call": how the job runs the model. One thread calls it with the whole batch, and
  TensorFlow splits each layer's work evenly among one intra-op thread per core.
- "free streams": one thread per core, each with one intra-op thread, calling batches of
  16/n images independently. No stream waits for another.

The loss is 1 − (rate with the decoder)/(rate alone). The decoder's share, rate × decode
time / n cores, is the loss L assumes. A loss well above the share means that while the
decoder holds one core, the model's threads on the other cores wait for it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

from benchmarks import bench, images, results, tables

MODES = ("one call", "free streams")
BATCH = bench.BATCH_SIZE
PHOTOS = 20  # 12 MP JPEGs the decoder cycles through


def decoder(pattern: str, rate: float) -> None:
    """The decoder process: decode_image over the photos at `rate` per second, until killed or orphaned."""
    from vgg.preprocess import decode_image

    parent = os.getppid()

    blobs = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as handle:
            blobs.append(handle.read())
    start, done = time.perf_counter(), 0
    while os.getppid() == parent:  # a model process killed on its timeout leaves no decoder behind
        wait = start + done / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        decode_image(blobs[done % len(blobs)])
        done += 1


def model(mode: str, weights: str, pattern: str, seconds: float, rate: float | None) -> dict:
    """In a fresh process: images/s alone, then beside the decoder at `rate` (None: the rate alone)."""
    import numpy as np

    from vgg._tensorflow import tf

    cores = len(os.sched_getaffinity(0))
    streams = cores if mode == "free streams" else 1
    if streams > 1:
        tf.config.threading.set_intra_op_parallelism_threads(1)  # before TensorFlow's first op
    from vgg.inference import Predictor

    predictor = Predictor(weights, max_batch_size=BATCH)
    per_stream = max(BATCH // streams, 1)
    batch = np.random.default_rng(0).integers(0, 256, (per_stream, 224, 224, 3), dtype=np.uint8)
    predictor(batch)  # traced and warm

    def labelled_per_s() -> float:
        counts = [0] * streams
        end = time.perf_counter() + seconds

        def stream(index: int) -> None:
            while time.perf_counter() < end:
                predictor(batch)
                counts[index] += per_stream

        start = time.perf_counter()
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - start)

    found = {"streams": streams, "images_per_call": per_stream, "alone": labelled_per_s()}
    found["decoder_rate"] = found["alone"] if rate is None else rate
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.decode_load", "--decoder", pattern, str(found["decoder_rate"])]
    )
    try:
        time.sleep(1.0)  # its start-up is not part of the rate
        if child.poll() is not None:
            raise RuntimeError(f"the decoder process exited with {child.returncode}")
        found["with_decoder"] = labelled_per_s()
    finally:
        child.kill()
        child.wait()
    return found


def in_child(mode: str, weights: str, pattern: str, seconds: float, rate: float | None) -> dict:
    argv = [sys.executable, "-m", "benchmarks.decode_load", "--model", mode, weights, pattern, str(seconds),
            "" if rate is None else str(rate)]  # fmt: skip
    done = subprocess.run(argv, cwd=results.REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode!r} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(result: dict, markdown: bool = False) -> str:
    """The printed table (or, with markdown, the docs' table) of a decode_load.json."""
    head = ("model run as", "streams × images", "alone img/s", "with the decoder img/s", "loss",
            "decoder's share", "loss / share")  # fmt: skip
    share = result["decoder_share"]
    untrained = ", UNTRAINED (synthesized): rates do not depend on their values"
    body = []
    for mode, entry in result["modes"].items():
        loss = 1 - entry["with_decoder"] / entry["alone"]
        shape = f"{entry['streams']} × {entry['images_per_call']}"
        rates = (f"{entry['alone']:.2f}", f"{entry['with_decoder']:.2f}")
        body.append((mode, shape, *rates, f"{loss:.3f}", f"{share:.3f}", f"{loss / share:.2f}"))
    lines = [
        results.machine_line(result["machine"]),
        *([""] if markdown else []),
        tables.table(head, body, markdown=markdown),
        "",
        f"decoder: {result['decode_ms']:.1f} ms per 12 MP photo on one core, run at {result['rate']:.2f} "
        "photos/s (the one-call model's rate alone); its share: rate × decode time / "
        f"{result['cores']} cores",
        f"weights: {result['weights']['file']}{untrained if result['weights']['untrained'] else ''}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--decoder"]:
        decoder(argv[1], float(argv[2]))
        return 0
    if argv[:1] == ["--model"]:
        mode, weights, pattern, seconds, rate = argv[1:6]
        print(json.dumps(model(mode, weights, pattern, float(seconds), float(rate) if rate else None)))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="output/bench", help="scratch: images, synthesized weights")
    parser.add_argument("--results", default=results.RESULTS, help="where decode_load.json and .txt go")
    parser.add_argument("--weights", help="weights file (default: synthesized, UNTRAINED)")
    parser.add_argument("--seconds", type=float, default=20.0, help="labelling time per rate measured")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive. Received: {args.seconds}")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        parser.error(f"needs at least 2 cores: the decoder shares them with the model. Received: {cores}")
    weights, _, weights_info = bench.prepare_weights(args.out, args.weights, for_peers=False)
    folder = os.path.join(args.out, "images", f"12mp-{PHOTOS}")
    paths = images.make_images(folder, bench.SIZES["12mp"], PHOTOS)
    pattern = os.path.join(folder, "*.jpg")
    decode_per_s = bench.bench_decode(paths)
    # The job's way first: its rate alone is the decoder's rate in both.
    one_call = in_child(MODES[0], weights, pattern, args.seconds, None)
    alone = one_call["alone"]
    modes = {MODES[0]: one_call, MODES[1]: in_child(MODES[1], weights, pattern, args.seconds, alone)}
    found = {
        **results.stamp("decode_load", "benchmarks.decode_load", argv),
        "weights": weights_info,
        "seconds": args.seconds,
        "batch_size": BATCH,
        "cores": cores,
        "decode_ms": 1000 / decode_per_s,
        "rate": alone,
        "decoder_share": alone / decode_per_s / cores,
        "modes": modes,
    }
    text = table(found)
    print(text)
    written = results.write(found, text, args.results, "decode_load")
    print("wrote " + ", ".join(map(results.relative, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
