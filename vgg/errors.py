"""The base of every error that ends one input as an errors row: a stable error_type and a message."""

from __future__ import annotations


class ClassifiedError(Exception):
    """One input failed for a reason with a stable name.

    `error_type` is the name users filter on in the errors table (e.g. "truncated",
    "not_found", "crashed"); `detail` is the human-readable rest. Picklable with its two
    arguments, so it can cross a process boundary (a decoder child, a Beam worker).
    """

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.detail = message

    def __reduce__(self):
        return type(self), (self.error_type, self.detail)
