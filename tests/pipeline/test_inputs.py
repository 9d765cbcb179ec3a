"""pipeline.inputs: image ids, reads with retries and their error types, input checks, matching."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.inputs import InputError, MatchInputs, ReadError, check_inputs, image_id, read_bytes
from tests.pipeline.faults import FaultyFileSystem, faulty
from vgg.errors import ClassifiedError


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


def test_image_id_is_stable_and_documented():
    # `printf %s gs://b/x.jpg | sha256sum | cut -c1-32` gives the same digits.
    assert image_id("gs://b/x.jpg") == hashlib.sha256(b"gs://b/x.jpg").hexdigest()[:32]
    assert len({image_id(f"/p/{i}.jpg") for i in range(1000)}) == 1000


def test_read_retries_with_backoff_then_succeeds(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8 bytes")
    slept = []
    FaultyFileSystem.faults[str(path)] = ("transient", 3)
    assert read_bytes(faulty(path), sleep=slept.append) == b"\xff\xd8 bytes"
    # 3 failures, 3 sleeps doubling from 0.5 s, success on the 4th and last attempt.
    assert slept == [0.5, 1.0, 2.0]
    assert FaultyFileSystem.opens[str(path)] == 4


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
    assert (FaultyFileSystem.opens[str(path)], slept) == (opens, sleeps)
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

    monkeypatch.setattr("pipeline.inputs.FileSystems.open", open_failing)
    with pytest.raises(ReadError) as info:
        read_bytes("gs://bucket/x.jpg", attempts=3, sleep=lambda s: None)
    assert (info.value.error_type, len(calls)) == (error_type, attempts)


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
    # Fine; what they name first, made absolute: the sample pipeline.shards checks the format of.
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
