"""The logging set-up of every command line (vgg's and pipeline's): one format, others' noise off."""

from __future__ import annotations

import logging

# Every tool's log lines look alike: time, level, logger, message.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.WARNING, *, packages: tuple[str, ...] = ("vgg",)) -> None:
    """Logs to stderr in FORMAT: the project's loggers from `level`, every other from WARNING.

    Libraries' INFO chatter (TensorFlow's, Beam's, faiss' loader) stays off the screen while
    a tool's own progress can show at INFO.

    Args:
        level: The lowest level shown of the project's own loggers (INFO for progress).
        packages: The project's top-level logger names.
    """
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in packages:
        logging.getLogger(name).setLevel(level)
