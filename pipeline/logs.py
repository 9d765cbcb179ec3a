"""The logging set-up of every pipeline command line: vgg's one format, for pipeline's loggers too."""

from __future__ import annotations

import logging

from vgg import logs


def configure(level: int = logging.WARNING) -> None:
    """vgg.logs.configure for the pipeline and vgg loggers: theirs from `level`, the rest from WARNING."""
    logs.configure(level, packages=("pipeline", "vgg"))
