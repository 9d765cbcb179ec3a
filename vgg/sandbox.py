"""Runs the image decoder in a child process: a crash in native code costs one errors row, not the worker.

Pillow's decoders are C code fed with untrusted bytes. A segfault, an abort or the
kernel's out-of-memory killer there would take the whole SDK worker down, and on
Dataflow the bundle would be retried until the job fails. `IsolatedDecoder` keeps one
long-lived child (`python -m vgg.sandbox`, a fresh interpreter: nothing of the
worker's TensorFlow or gRPC threads is forked) per DoFn instance and talks to it over
pipes. When the child dies the call raises `DecoderCrashed("crashed")` and the next
call starts a new child; when a call runs past `timeout_s` the child is killed and
`DecoderCrashed("timeout")` is raised.

The child's replies are raw pixels and JSON, never pickles, so whatever happens in the
child cannot make the worker run code. This is crash containment, not a security
sandbox: the child runs as the same user with the same access as the worker. Its cost
per image is measured in docs/reliability.md ("Crash containment").
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from vgg.errors import ClassifiedError
from vgg.preprocess import DecodedImage, ImageError, decode_image

_LENGTH = struct.Struct(">Q")
_PIXELS_HEADER = struct.Struct(">IIIII")  # width, height, then the pixel array's shape
_START_TIMEOUT_S = 120.0
# The longest one decode may take by default (the job's --decode_timeout_s, the tools' queries).
DECODE_TIMEOUT_S = 60.0


# The decode-stage error types this module adds to the decoder's own (vgg.preprocess.ERROR_TYPES).
DECODER_ERROR_TYPES = {
    "crashed": "the decoder process died on this input (e.g. a segfault in a native library)",
    "timeout": "decoding ran past --decode_timeout_s; the decoder process was killed",
    "decode_error": "the decoder raised an unexpected exception (a bug, not a known bad input)",
}


class DecoderCrashed(ClassifiedError):
    """The decoder process died ("crashed") or ran past its time limit ("timeout")."""


class DecodeFailed(RuntimeError):
    """The decoder raised something other than ImageError (a bug, not a bad image)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self):
        type_name, _, message = str(self).partition(": ")
        return type(self), (type_name, message)


class IsolatedDecoder:
    """Calls `decode(data, **kwargs)` in a child process; same results, crashes contained.

    Not thread-safe: use one per thread (a Beam DoFn instance is one thread at a time).

    Args:
        decode: An importable function (sent by reference) returning a DecodedImage;
            `vgg.preprocess.decode_image` unless a test swaps in another.
        timeout_s: Longest one call may take, or None for no limit.
    """

    def __init__(self, decode: Callable[..., DecodedImage] = decode_image, *, timeout_s: float | None = None):
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None. Received: timeout_s={timeout_s!r}")
        self._decode = decode
        self._timeout_s = timeout_s
        self._child: subprocess.Popen | None = None

    def __call__(self, data: bytes, **kwargs) -> DecodedImage:
        """Decodes in the child.

        Raises:
            ImageError: as `decode` would.
            DecoderCrashed: the child died ("crashed") or timed out ("timeout").
            DecodeFailed: `decode` raised any other exception.
        """
        if self._child is not None and self._child.poll() is not None:
            self._stop()  # died between calls (e.g. killed from outside): not this input's doing
        if self._child is None:
            self._start()
        child = self._child
        try:
            options, photo = json.dumps(kwargs).encode(), memoryview(data).cast("B")
            # Both frames in one system call, the photo's bytes not copied on the way.
            _write_all(child.stdin, [_LENGTH.pack(len(options)), options, _LENGTH.pack(len(photo)), photo])
            reply = _read_frame(child.stdout, self._timeout_s)
        except TimeoutError:
            self._stop()
            raise DecoderCrashed(
                "timeout", f"decoding took longer than {self._timeout_s} s; the decoder process was killed"
            ) from None
        except (OSError, EOFError) as error:
            code = self._stop()
            raise DecoderCrashed(
                "crashed", f"the decoder process died while decoding this input ({_describe(code, error)})"
            ) from None
        return _parse_reply(reply)

    def _start(self) -> None:
        # A fresh interpreter rather than a fork: the worker may hold TensorFlow's and
        # gRPC's threads (and their locks), which a forked child would inherit mid-flight.
        # It gets the worker's import path, so that it finds what the worker finds (this
        # package, a test's stand-in decoder) wherever that was installed.
        path = [p for p in sys.path if p]
        self._child = subprocess.Popen(
            [sys.executable, "-m", "vgg.sandbox"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's warnings go to the worker's log
            close_fds=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        )
        _widen_pipes(self._child)
        try:
            _write_frame(self._child.stdin, pickle.dumps(self._decode))
            reply = _read_frame(self._child.stdout, _START_TIMEOUT_S)
        except (OSError, EOFError, TimeoutError) as error:
            code = self._stop()
            raise RuntimeError(f"the decoder process did not start ({_describe(code, error)})") from error
        if reply != b"R":
            self._stop()
            raise RuntimeError(f"the decoder process cannot load {self._decode!r}: {reply[1:].decode()}")

    def _stop(self) -> int | None:
        """Kills the child if it still runs; returns its exit status (negative: a signal)."""
        child, self._child = self._child, None
        if child is None:
            return None
        if child.poll() is None:
            child.kill()
        for stream in (child.stdin, child.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            return child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Ends the child (it also exits by itself when this process goes away)."""
        self._stop()

    def __getstate__(self):
        return {"_decode": self._decode, "_timeout_s": self._timeout_s, "_child": None}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to do
            pass


def _parse_reply(reply: bytes) -> DecodedImage:
    kind = reply[:1]
    if kind == b"O":
        width, height, *shape = _PIXELS_HEADER.unpack_from(reply, 1)
        # A view of the reply's own bytes: the pixels are not copied again.
        pixels = np.frombuffer(reply, np.uint8, offset=1 + _PIXELS_HEADER.size).reshape(shape)
        return DecodedImage(pixels=pixels, width=width, height=height)
    detail = json.loads(reply[1:])
    if kind == b"I":
        raise ImageError(detail["error_type"], detail["message"])
    raise DecodeFailed(detail["type"], detail["message"])


def _widen_pipes(child: subprocess.Popen) -> None:
    """1 MiB pipes (Linux) carry a photo and its pixels in one go instead of 64 KiB steps."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for stream in (child.stdin, child.stdout):
        try:
            fcntl.fcntl(stream.fileno(), set_size, 1 << 20)
        except OSError:  # over /proc/sys/fs/pipe-max-size: the default size still works
            pass


def _describe(code: int | None, error: BaseException) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code is not None:
        return f"exit status {code}"
    return f"{type(error).__name__}: {error}"


def _write_all(stream: BinaryIO, parts: list) -> None:
    """Writes the byte buffers in order straight to the stream's pipe, in as few system calls as it takes.

    The stream's own buffer is never used (every write goes through here), so nothing waits in it.
    """
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    fd = stream.fileno()
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views:
            views[0] = views[0][written:]


def _frame(payload: bytes) -> list[bytes]:
    return [_LENGTH.pack(len(payload)), payload]


def _write_frame(stream: BinaryIO, payload: bytes) -> None:
    _write_all(stream, _frame(payload))


def _read_exactly(stream: BinaryIO, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    fd = stream.fileno()
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the decoder process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: BinaryIO, timeout_s: float | None) -> bytes:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    (size,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size, deadline))
    return _read_exactly(stream, size, deadline)


def _serve() -> None:
    """The child's loop: (kwargs, data) frames in, one reply frame out, until stdin closes."""
    # The protocol owns the original stdout; anything the decoder prints goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    try:
        decode = pickle.loads(_read_frame(requests, None))
    except EOFError:
        return
    except Exception as error:
        _write_frame(replies, b"F" + f"{type(error).__name__}: {error}".encode())
        return
    _write_frame(replies, b"R")
    while True:
        try:
            kwargs = json.loads(_read_frame(requests, None))
            data = _read_frame(requests, None)
        except EOFError:
            return
        try:
            image = decode(data, **kwargs)
            pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
            head = b"O" + _PIXELS_HEADER.pack(image.width, image.height, *pixels.shape)
            reply = [_LENGTH.pack(len(head) + pixels.nbytes), head, pixels]  # the pixels not copied
        except ImageError as error:
            detail = {"error_type": error.error_type, "message": error.detail}
            reply = _frame(b"I" + json.dumps(detail).encode())
        except Exception as error:
            reply = _frame(b"E" + json.dumps({"type": type(error).__name__, "message": str(error)}).encode())
        _write_all(replies, reply)


if __name__ == "__main__":
    _serve()
