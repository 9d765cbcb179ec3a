"""TensorFlow and Keras, imported once, without its native start-up noise on machines that have no GPU driver.

On a machine without an NVIDIA driver the TensorFlow wheel's C++ start-up writes
`Could not find cuda drivers ...`, `failed call to cuInit: ... UNKNOWN ERROR (303)` and an
absl preamble straight to file descriptor 2, before any Python setting can reach them
(TF_CPP_MIN_LOG_LEVEL does not). They read like failures where nothing is wrong. Those
exact lines are dropped while TensorFlow loads and first lists its devices; every other
line written meanwhile is passed on. Where a driver is installed nothing is filtered: a
cuInit failure there is real.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",  # Could not find cuda drivers on your machine, GPU will not be used.
    "failed call to cuInit",
)


@contextlib.contextmanager
def filtered_stderr(patterns: tuple[str, ...]):
    """Holds what is written to fd 2 meanwhile, then passes on the lines that match no pattern."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().splitlines(keepends=True):
                if not any(pattern.encode() in line for pattern in patterns):
                    os.write(2, line)


if os.path.exists("/proc/driver/nvidia/version"):
    import keras
    import tensorflow as tf
else:
    with filtered_stderr(NOISE):
        import keras
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # where cuInit fails without a driver

__all__ = ["keras", "tf"]
