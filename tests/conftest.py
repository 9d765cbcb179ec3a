"""Shared, expensive fixtures: one synthesized weights file per format and one built model per session."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On Ampere and later GPUs TensorFlow runs float32 matmuls and convolutions in TF32 (10-bit
# mantissa) by default; the suite's 1e-4 parity tolerances are for true float32 on any device.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SEED = 0  # every synthesized file in the suite holds synth_weights(SEED): UNTRAINED


@pytest.fixture(scope="session")
def sample_photos() -> list[pathlib.Path]:
    """The bundled real photographs (see samples/README.md for sources and licences)."""
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    assert len(photos) >= 5, photos
    return photos


@pytest.fixture(scope="session")
def synth():
    from vgg.weights import synth_weights

    return synth_weights(SEED)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def npz_path(weights_dir, synth) -> str:
    """The seed's npz layout holding synth_weights(SEED) (UNTRAINED)."""
    from vgg.weights import write_synth

    path = str(weights_dir / "vgg16_untrained.npz")
    write_synth(path, fmt="npz", seed=SEED)
    return path


@pytest.fixture(scope="session")
def h5_path(weights_dir, synth) -> str:
    """Keras' h5 layout, Keras-1 weight names like the genuine file, same UNTRAINED weights."""
    from vgg.weights import write_synth

    path = str(weights_dir / "vgg16_untrained.h5")
    write_synth(path, fmt="h5", seed=SEED, naming="keras1")
    return path


@pytest.fixture(scope="session")
def predictor(npz_path):
    """One loaded model for the whole session."""
    from vgg.inference import Predictor

    return Predictor(npz_path)


@pytest.fixture(scope="session")
def photo_batch(sample_photos):
    """The sample photos preprocessed (squash), as one uint8 batch."""
    import numpy as np

    from vgg.preprocess import load_image

    return np.stack([load_image(p).pixels for p in sample_photos])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The generated bad-input corpus (tests/corpus.py): (folder, file name -> Expected).

    Shared and read-only: a test that deletes or changes files copies it first.
    """
    from tests.corpus import write_corpus

    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)
