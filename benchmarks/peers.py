"""The peers: the same job written with Beam's and Keras' stock parts, as a user would, untuned and tuned.

    python -m benchmarks.peers stock FOLDER OUT WEIGHTS.h5
    python -m benchmarks.peers tuned FOLDER OUT WEIGHTS.h5 --batch_size 16

Both read every .jpg in FOLDER with Keras' `load_img` + `preprocess_input` in a
`beam.Map`, run `keras.applications.VGG16` through RunInference with Beam's
`TFModelHandlerNumpy` (`SAVED_WEIGHTS`), and write the top 5 classes as text.

- stock: `max_batch_size=32` only, so Beam's `BatchElements` starts at batch 1 and grows
  toward one-second batches; the handler calls the Keras model eagerly on each batch.
- tuned: what a careful user sets with the same parts: `min_batch_size = max_batch_size`
  = our job's batch size (full batches from the first), and an `inference_fn` that calls
  the model through one traced `tf.function` (the handler's documented hook).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STOCK_MAX_BATCH = 32


def traced_inference_fn():
    """An `inference_fn` for TFModelHandlerNumpy calling the model through one traced graph per model."""
    import numpy as np
    import tensorflow as tf
    from apache_beam.ml.inference.base import PredictionResult

    traced = {}

    def inference_fn(model, batch, inference_args, model_id=None):
        forward = traced.get(id(model))
        if forward is None:  # once per loaded model; the batch dimension stays free
            forward = traced[id(model)] = tf.function(
                lambda images: model(images, training=False),
                input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)],
            )
        predictions = forward(np.stack(batch, axis=0)).numpy()
        return [PredictionResult(x, y, model_id) for x, y in zip(batch, predictions)]

    return inference_fn


def run_peer_job(kind: str, folder: str, out: str, h5: str, batch_size: int) -> None:
    """Runs the peer of `kind` ("stock" or "tuned") to the end on the DirectRunner."""
    import apache_beam as beam
    import keras
    import numpy as np
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

    if kind == "stock":
        tuning = {"max_batch_size": STOCK_MAX_BATCH}
    else:
        tuning = {
            "min_batch_size": batch_size,
            "max_batch_size": batch_size,
            "inference_fn": traced_inference_fn(),
        }
    handler = TFModelHandlerNumpy(
        h5,
        model_type=ModelType.SAVED_WEIGHTS,
        create_model_fn=lambda: keras.applications.VGG16(weights=None),
        **tuning,
    )
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jpg"))
    with beam.Pipeline() as pipeline:
        (
            pipeline
            | "List" >> beam.Create(files)
            | "Preprocess" >> beam.Map(load)
            | "Infer" >> RunInference(handler)
            | "Top5" >> beam.Map(top5)
            | "Write" >> beam.io.WriteToText(os.path.join(out, "peer"))
        )


def command(kind: str, folder: str, out: str, h5: str, batch_size: int) -> list[str]:
    """The argv that runs a peer in its own process."""
    return [sys.executable, "-m", "benchmarks.peers", kind, folder, out, h5, "--batch_size", str(batch_size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("stock", "tuned"))
    parser.add_argument("folder", help="folder of .jpg files")
    parser.add_argument("out", help="output folder")
    parser.add_argument("h5", help="VGG16 weights in Keras' h5 format")
    parser.add_argument("--batch_size", type=int, default=16, help="the tuned peer's batch size")
    args = parser.parse_args(argv)
    run_peer_job(args.kind, args.folder, args.out, args.h5, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
