"""Small fakes for pipeline tests: a model handler that needs no TensorFlow, and a flaky reader."""

from __future__ import annotations

import numpy as np

from pipeline.job.model_handler import ModelConfig, VGG16ModelHandler


class FakeModel:
    """probs put all mass on class (mean pixel value mod 1000); fc7 is the channel means, tiled."""

    def __call__(self, images: np.ndarray):
        means = images.reshape(len(images), -1, 3).mean(axis=1)  # (N, 3)
        probs = np.zeros((len(images), 1000), np.float32)
        probs[np.arange(len(images)), images.reshape(len(images), -1).mean(axis=1).astype(int) % 1000] = 1.0
        fc7 = np.tile(means.astype(np.float32), (1, 4096 // 3 + 1))[:, :4096]
        return probs, fc7


class FakeHandler(VGG16ModelHandler):
    """The real VGG16ModelHandler with FakeModel for the network; `fail_on` fails batches with that pixel."""

    def __init__(self, fail_on: int | None = None, **config):
        super().__init__(ModelConfig("unused.npz", **config))
        self._fail_on = fail_on

    def load_model(self):
        return FakeModel()

    def run_inference(self, batch, model, inference_args=None):
        if self._fail_on is not None and any(int(a[0, 0, 0]) == self._fail_on for a in batch):
            raise RuntimeError("device fell over")
        return super().run_inference(batch, model, inference_args)  # the real handler's own code
