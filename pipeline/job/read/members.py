"""What a shard reader yields per member (a Member or a Failure), and the helpers every format shares."""

from __future__ import annotations

import itertools
from typing import NamedTuple

from pipeline.contract import key_uri


class Member(NamedTuple):
    """One image of a shard."""

    uri: str
    data: bytes


class Failure(NamedTuple):
    """A member (or the whole shard) that yields no image; error_type as in an errors row."""

    uri: str
    stage: str
    error_type: str
    message: str


class Uris:
    """SHARD#KEY, made unique within the shard by appending #2, #3, ... in shard order.

    KEY is the key as pipeline.contract.key_uri writes it: unchanged when its bytes are
    UTF-8 (and it does not start with '%'), else percent-encoded behind a '%'. With keys
    that are always indices (track=False) no uri can repeat: nothing is kept.
    """

    def __init__(self, shard: str, *, track: bool = True):
        self._shard = shard
        self._given: set[str] | None = set() if track else None

    def __call__(self, key: str | bytes) -> str:
        uri = f"{self._shard}#{key_uri(key)}"
        if self._given is None:
            return uri
        candidate = uri
        for n in itertools.count(2):
            if candidate not in self._given:
                break
            candidate = f"{uri}#{n}"
        self._given.add(candidate)
        return candidate


def damaged(shard: str, where: str, what: str, done: int, unit: str) -> Failure:
    message = f"{shard}: damaged {where}: {what}; {done} {unit} read before it, the rest not read"
    return Failure(shard, "read", "damaged_shard", message)


def too_large(uri: str, what: str, size: int, max_bytes: int) -> Failure:
    message = f"{uri}: {what} is {size} bytes, over {max_bytes} (--max_input_bytes); not read"
    return Failure(uri, "read", "too_large", message)


def key_value(value) -> str | bytes:
    """A key field's value as Uris takes it: bytes as they are (spelled there), anything else as str."""
    return value if isinstance(value, bytes) else str(value)


def either(names) -> str:
    return " or ".join(map(repr, names))


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # Arrow's messages span lines
