"""pipeline.job.read.files: image ids, reads with retries and their error types, input checks, matching."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.contract import image_id
from pipeline.job.read.files import MatchInputs, check_inputs
from pipeline.storage import InputError, ReadError, classify, read_bytes, with_retries
from tests.pipeline.faults import FaultyFileSystem, faulty
from vgg.errors import ClassifiedError


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def test_image_id_is_stable_and_documented():
    # The documented id, computed outside Python: `printf %s gs://b/x.jpg | sha256sum | cut -c1-32`.
    assert image_id("gs://b/x.jpg") == "468467c475b6655771dd2f98bf704fc9"
    assert len({image_id(f"/p/{i}.jpg") for i in range(1000)}) == 1000


def backoff(slept: list[float], full: list[float]) -> bool:
    """Whether each wait is its full exponential delay shortened by at most half (the jitter)."""
    return len(slept) == len(full) and all(f / 2 <= s <= f for s, f in zip(slept, full))


def test_read_retries_with_backoff_then_succeeds(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8 bytes")
    slept = []
    FaultyFileSystem.faults[str(path)] = ("transient", 3)
    assert read_bytes(faulty(path), sleep=slept.append) == b"\xff\xd8 bytes"
    # 3 failures, 3 waits doubling from 0.5 s (each at random up to half shorter), success on
    # the 4th and last attempt.
    assert backoff(slept, [0.5, 1.0, 2.0]), slept
    assert FaultyFileSystem.opens[str(path)] == 4


def test_backoff_is_jittered():
    # Readers that failed together (one outage) must not all come back at the same instant:
    # 50 first waits of 0.5 s full delay, spread over [0.25, 0.5].
    waits = []
    for _ in range(50):
        with pytest.raises(OSError):
            list(with_retries(_fails, "x", attempts=2, sleep=waits.append))
    assert backoff(waits, [0.5] * 50) and len(set(waits)) > 40


def _fails(_done):
    raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")


def test_with_retries_resumes_after_the_items_yielded():
    # The stream fails after its second item on the first try: the retry starts at item 2.
    calls, slept = [], []

    def attempt(done):
        calls.append(done)
        for item in range(done, 4):
            if len(calls) == 1 and item == 2:
                raise TimeoutError("dropped")
            yield item

    assert list(with_retries(attempt, "x", sleep=slept.append)) == [0, 1, 2, 3]
    assert calls == [0, 2] and len(slept) == 1
    with pytest.raises(ValueError, match=r"^attempts must be at least 1\. Received: attempts=0$"):
        with_retries(attempt, "x", attempts=0)


@pytest.mark.parametrize(
    ("fault", "error_type", "opens", "sleeps"),
    [
        ("always", "read_error", 4, [0.5, 1.0, 2.0]),  # gives up after 4 attempts
        ("permission", "permission_denied", 1, []),  # permanent: no retry
        ("vanish", "not_found", 1, []),
    ],
)
def test_permanent_read_errors_are_not_retried_forever(tmp_path, fault, error_type, opens, sleeps):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"data")
    FaultyFileSystem.faults[str(path)] = (fault, 0)
    slept = []
    with pytest.raises(ReadError) as info:
        read_bytes(faulty(path), sleep=slept.append)
    assert info.value.error_type == error_type
    assert FaultyFileSystem.opens[str(path)] == opens and backoff(slept, sleeps), slept
    # ReadError survives pickling (Beam ships exceptions between processes).
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), copy.error_type, str(copy)) == (ReadError, error_type, str(info.value))
    assert isinstance(copy, ClassifiedError)


class _CloudError(Exception):
    """What google.api_core and Beam's S3 client raise: an exception with an HTTP status."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.code = status


@pytest.mark.parametrize(
    ("status", "error_type", "attempts"),
    [(404, "not_found", 1), (410, "not_found", 1), (403, "permission_denied", 1), (503, "read_error", 3)],
)
def test_cloud_status_codes_decide_retries(monkeypatch, status, error_type, attempts):
    # 404/410 and 401/403 are permanent; anything else (a 503 here) is retried.
    calls = []

    def open_failing(uri, **kwargs):
        calls.append(uri)
        raise _CloudError(status)

    monkeypatch.setattr("pipeline.job.read.files.FileSystems.open", open_failing)
    with pytest.raises(ReadError) as info:
        read_bytes("gs://bucket/x.jpg", attempts=3, sleep=lambda s: None)
    assert (info.value.error_type, len(calls)) == (error_type, attempts)


def test_symlink_loop_is_permanent(tmp_path):
    # a -> b -> a: open() fails with ELOOP however often it is tried.
    os.symlink(tmp_path / "b.jpg", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    slept = []
    with pytest.raises(ReadError) as info:
        read_bytes(str(tmp_path / "a.jpg"), sleep=slept.append)
    assert (info.value.error_type, slept) == ("symlink_loop", [])
    assert "Too many levels of symbolic links" in str(info.value)


def test_path_through_a_file_is_permanent(tmp_path):
    # photo.jpg is a file, so photo.jpg/x names nothing: ENOTDIR, a not_found with no retry.
    (tmp_path / "photo.jpg").write_bytes(b"x")
    slept = []
    with pytest.raises(ReadError) as info:
        read_bytes(str(tmp_path / "photo.jpg" / "x"), sleep=slept.append)
    assert (info.value.error_type, slept) == ("not_found", [])
    assert "Not a directory" in str(info.value)


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (OSError(errno.ELOOP, "Too many levels of symbolic links"), "symlink_loop"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "not_found"),
        (BeamIOError("open failed", {"p": OSError(errno.ELOOP, "loop")}), "symlink_loop"),  # wrapped
        (OSError("[Errno 20] Not a directory: '/p/x'"), "not_found"),  # only the text says so
        (ConnectionResetError(errno.ECONNRESET, "reset"), None),  # transient: retried
    ],
)
def test_classify_eloop_and_enotdir(error, error_type):
    assert classify(error) == error_type


def test_oversized_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(ReadError) as info:
        read_bytes(str(path), max_bytes=1000)
    assert info.value.error_type == "too_large"
    assert read_bytes(str(path), max_bytes=1001) == b"x" * 1001


def test_launcher_input_checks_name_the_problem(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    listed = tmp_path / "listed.txt"
    listed.write_text("# shards\nb.jpg\nc.jpg\n")
    # Fine; what they name first, made absolute: the sample pipeline.job.read.shards checks the format of.
    assert check_inputs([f"{tmp_path}/*.jpg"], str(listed)) == [
        str(tmp_path / "a.jpg"),
        os.path.abspath("b.jpg"),
    ]
    with pytest.raises(InputError, match=r"--input '.*\*\.png' matches no files"):
        check_inputs([f"{tmp_path}/*.jpg", f"{tmp_path}/*.png"], None)
    empty = tmp_path / "list.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="lists no URIs"):
        check_inputs(None, str(empty))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("/photos/caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(InputError, match="is not UTF-8 text"):
        check_inputs(None, str(latin1))
    with pytest.raises(InputError, match="cannot be read"):
        check_inputs(None, str(tmp_path / "missing.txt"))


def test_match_inputs_lists_each_uri_once(tmp_path, monkeypatch):
    for name in ("a.jpg", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    # A comment, a blank line, a file the patterns match too, and a relative path.
    listing.write_text(f"# photos\n\n{tmp_path / 'a.jpg'}\nc.png\n")
    monkeypatch.chdir(tmp_path)  # relative paths are made absolute on the launcher
    with TestPipeline() as p:
        uris = p | MatchInputs(["*.jpg", f"{tmp_path}/a.*"], str(listing))
        assert_that(uris, equal_to([str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.png")]))
