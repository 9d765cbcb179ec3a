"""Test images for the benchmarks, made from the bundled photos in samples/: same inputs on every machine."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from benchmarks.results import REPO

SAMPLES = os.path.join(REPO, "samples")


def sample_photos() -> list[str]:
    """The bundled photos (JPEG and PNG), sorted."""
    return sorted(os.path.join(SAMPLES, n) for n in os.listdir(SAMPLES) if n.endswith((".jpg", ".png")))


def _cover(path: str, size: tuple[int, int], zoom: float = 1.0) -> Image.Image:
    """The photo scaled (bicubic) to cover size, times zoom, and centre-cropped to size."""
    with Image.open(path) as source:
        rgb = source.convert("RGB")
    scale = max(size[0] / rgb.width, size[1] / rgb.height) * zoom
    big = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.BICUBIC)
    left, top = (big.width - size[0]) // 2, (big.height - size[1]) // 2
    return big.crop((left, top, left + size[0], top + size[1]))


def make_images(folder: str, size: tuple[int, int], count: int) -> list[str]:
    """JPEGs (quality 90) made from the bundled photos: resized, shifted crops, so each differs.

    Files already there are kept (they are the same bytes), so reruns start at once.
    """
    os.makedirs(folder, exist_ok=True)
    sources = sample_photos()
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"img{i:05d}.jpg")
        if not os.path.exists(path):
            _cover(sources[i % len(sources)], size, 1.0 + 0.01 * (i % 7)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def make_noisy(path: str, source: str, size: tuple[int, int], sigma: float, seed: int = 0) -> str:
    """A JPEG (quality 90) of source scaled to size plus Gaussian noise of sigma levels per channel.

    Noise is what makes a camera JPEG large: an upscaled photo is smooth and compresses
    to a few hundred KB at 12 MP, a phone photo of the same size is 1.5-4 MB. Decoding
    cost follows the bytes, so the noise level stands in for the camera.
    """
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        pixels = np.asarray(_cover(source, size), dtype=np.float32)
        if sigma:
            pixels = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape).astype(np.float32)
        Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path
