"""Local inputs listed as the shell lists them, odd names, special files, reads that cannot block forever."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import threading
import time

import pyarrow as pa
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.contract import image_id, path_uri
from pipeline.job.read import files
from pipeline.job.read.shards import Failure, Member, read_shard
from pipeline.storage import (
    InputError,
    ReadError,
    classify,
    expand,
    local_glob,
    match,
    read_bytes,
)
from pipeline.tools.report import thumbnail
from tests.conftest import SAMPLES
from tests.pipeline.faults import FaultyFileSystem, faulty
from tests.shards import write_parquet, write_tar

LATIN1 = b"caf\xe9.jpg"  # "café.jpg" as Latin-1 wrote it: not valid UTF-8
# Every odd entry of odd_folder (by its name's bytes) -> the error_type reading it gives;
# None: a file that reads.
ODD = {
    LATIN1: None,
    b"back\\slash.jpg": None,
    b"plain.jpg": None,
    b"dangling.jpg": "not_found",
    b"loop-a.jpg": "symlink_loop",
    b"loop-b.jpg": "symlink_loop",
    b"fifo.jpg": "not_a_file",
    b"socket.jpg": "not_a_file",
    b"folder": "not_a_file",
}


@pytest.fixture(autouse=True)
def no_faults():
    FaultyFileSystem.reset()
    yield
    FaultyFileSystem.reset()


@pytest.fixture
def odd_folder(tmp_path):
    """A folder of one of each ODD entry, a hidden file, a file in the sub-folder; the socket closed after."""
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(folder)
    for name in (LATIN1, b"back\\slash.jpg", b"plain.jpg", b".hidden.jpg"):
        with open(raw + b"/" + name, "wb") as handle:
            handle.write(b"\xff\xd8 " + name)
    os.symlink(b"nowhere.jpg", raw + b"/dangling.jpg")
    os.symlink(b"loop-b.jpg", raw + b"/loop-a.jpg")
    os.symlink(b"loop-a.jpg", raw + b"/loop-b.jpg")
    os.mkfifo(raw + b"/fifo.jpg")
    (folder / "folder").mkdir()
    (folder / "folder" / "inner.jpg").write_bytes(b"\xff\xd8 inner")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.jpg"))
    yield folder
    server.close()


def shell_listing(folder, pattern: str) -> set[bytes]:
    """What bash (globstar on, a pattern matching nothing expanding to nothing) lists, as bytes."""
    done = subprocess.run(
        [
            "bash",
            "-O",
            "globstar",
            "-O",
            "nullglob",
            "-c",
            f'cd "$1" && printf "%s\\0" {pattern}',
            "_",
            folder,
        ],
        capture_output=True,
        check=True,
    )
    return {name for name in done.stdout.split(b"\0") if name}


@pytest.mark.parametrize("pattern", ["*", "**", "**/*.jpg", "*.jpg", "*/", "**/", ".*", "*[\\\\]*", "f*/**"])
def test_the_listing_is_the_shells(odd_folder, pattern):
    # Every name bash lists, the odd ones too (a name that is not UTF-8, a backslash, links
    # that lead nowhere or in a loop, a FIFO, a socket, a folder), and nothing else.
    prefix = os.fsencode(odd_folder) + b"/"
    # bash runs in the folder; ours lists it by its absolute path, so `DIR/**` also names the
    # folder itself ("DIR/", here b""), which a relative `**` does not.
    ours = {os.fsencode(path).removeprefix(prefix) for path in local_glob(f"{odd_folder}/{pattern}")} - {b""}
    assert ours == shell_listing(odd_folder, pattern)
    assert ours  # each pattern here matches something, or the comparison says little


def test_the_job_lists_every_odd_entry_once(odd_folder):
    # `*` lists the 9 ODD entries (not .hidden.jpg, not folder/inner.jpg): 9 uris, the
    # name that is not UTF-8 spelled as a file:// URI, the others as their plain path.
    uris = match(f"{odd_folder}/*")
    assert len(uris) == len(ODD) == len(shell_listing(odd_folder, "*")) == 9
    assert f"file://{odd_folder}/caf%E9.jpg" in uris
    assert f"{odd_folder}/back\\slash.jpg" in uris
    assert all(uri.encode("utf-8") for uri in uris)  # every uri is valid UTF-8
    assert list(expand(path_uri(os.fsencode(odd_folder) + b"/caf\xe9*"))) == [
        f"file://{odd_folder}/caf%E9.jpg"
    ]


def test_each_odd_entry_reads_or_fails_at_once(odd_folder):
    # Decided from stat before any open: the FIFO would block an open() forever, so a
    # timeout here (5 s) would show that it was opened.
    for name, error_type in ODD.items():
        uri = path_uri(os.fsencode(odd_folder) + b"/" + name)
        start = time.monotonic()
        if error_type is None:
            assert read_bytes(uri, timeout_s=5) == b"\xff\xd8 " + name
            continue
        slept = []
        with pytest.raises(ReadError) as info:
            read_bytes(uri, timeout_s=5, sleep=slept.append)
        assert (info.value.error_type, slept) == (error_type, []), name  # no retry
        assert time.monotonic() - start < 4
        str(info.value).encode("utf-8")  # the message is valid UTF-8: it goes into a Parquet row
    fifo = str(odd_folder / "fifo.jpg")
    with pytest.raises(ReadError, match=r"fifo\.jpg: not a regular file: a FIFO \(named pipe\); not opened$"):
        read_bytes(fifo)
    with pytest.raises(ReadError, match=r"dangling symbolic link \(to 'nowhere\.jpg'\)"):
        read_bytes(str(odd_folder / "dangling.jpg"))
    with pytest.raises(ReadError) as info:
        read_bytes("/dev/null")  # a character device
    assert info.value.error_type == "not_a_file" and "a character device" in str(info.value)


def test_only_spelled_uris_travel_between_the_job_s_steps(odd_folder, tmp_path):
    # Beam encodes str elements as UTF-8 between steps (by the type hints, and always after
    # 2.62), so a name that is not UTF-8 must leave the Match step spelled: a surrogate
    # escape would fail the job (UnicodeEncodeError at MatchInputs/Match). The
    # pattern is given as argv holds it (undecodable bytes as surrogate escapes); the list
    # names the same file once more, as its file:// URI: one input.
    latin1_pattern = os.fsdecode(os.fsencode(odd_folder) + b"/caf\xe9*")
    listed = tmp_path / "list.txt"
    listed.write_text(f"file://{odd_folder}/caf%E9.jpg\n")
    with TestPipeline() as p:
        uris = p | files.MatchInputs([f"{odd_folder}/*", latin1_pattern], str(listed))
        assert_that(uris, equal_to(match(f"{odd_folder}/*")))  # the 9 ODD entries, each spelled once


def test_the_spelled_uri_reads_the_right_bytes(odd_folder):
    # The spelling is reversible: read_bytes of the file:// URI opens the Latin-1 name.
    uri = f"file://{odd_folder}/caf%E9.jpg"
    assert read_bytes(uri) == b"\xff\xd8 " + LATIN1
    assert image_id(uri) == image_id(path_uri(os.fsencode(odd_folder) + b"/" + LATIN1))


def test_a_bare_folder_is_refused_on_the_launcher(odd_folder):
    for given in (str(odd_folder), f"{odd_folder}/"):
        with pytest.raises(InputError) as info:
            files.check_inputs([given], None)
        message = str(info.value)
        assert "\n" not in message and f"{odd_folder}/**" in message and "is a folder" in message
    assert files.check_inputs([f"{odd_folder}/*"], None) == [f"{odd_folder}/back\\slash.jpg"]


def test_the_input_list_keeps_a_names_spaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = tmp_path / "list.txt"
    # Spaces at both ends belong to the name; a file:// URI of a UTF-8 name is its plain path;
    # only the line ending ("\n", "\r\n") is not part of the name.
    listed.write_bytes(b"  two spaces.jpg  \r\n# a comment\n\n   \nfile://%s/a%%20b.jpg\n" % bytes(tmp_path))
    assert files.read_input_list(str(listed)) == [f"{tmp_path}/  two spaces.jpg  ", f"{tmp_path}/a b.jpg"]
    assert files.list_line(" x ") == f"{tmp_path}/ x "
    assert files.list_line("  # not a name") is None


# ------------------------------------------------------------------- reads that never end


class _Blocked(io.RawIOBase):
    """A stream that yields `head` and then never answers, until released."""

    def __init__(self, head: bytes, release: threading.Event):
        self._head, self._release = head, release

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self._head:
            self._release.wait()
            return 0
        n = min(len(buffer), len(self._head))
        buffer[:n], self._head = self._head[:n], self._head[n:]
        return n


@pytest.fixture
def never_answers(monkeypatch):
    """gs:// opens that hang (at open, or after the first bytes read); released at the end."""
    release, opens = threading.Event(), []

    def open_hanging(uri, **kwargs):
        opens.append(uri)
        if "open" in uri:
            release.wait()
        return io.BufferedReader(_Blocked(b"x" * 1000 if "head" in uri else b"", release))

    monkeypatch.setattr(FileSystems, "open", open_hanging)
    yield opens
    release.set()


@pytest.mark.parametrize("uri", ["gs://b/hangs-at-open.jpg", "gs://b/hangs-after-head.jpg"])
def test_a_read_that_never_ends_is_one_read_timeout(never_answers, uri):
    start = time.monotonic()
    slept = []
    with pytest.raises(ReadError) as info:
        read_bytes(uri, timeout_s=0.2, sleep=slept.append)
    assert time.monotonic() - start < 5
    # Not retried: one open, no wait; the error type says what happened.
    assert (info.value.error_type, never_answers, slept) == ("read_timeout", [uri], [])
    assert "no answer after 0.2 s (--read_timeout_s)" in str(info.value)


def test_a_shard_that_stops_answering_is_one_read_timeout_row(never_answers, tmp_path):
    # The shard opens, then its stream stops: one read_timeout row for the shard, at once.
    items = list(read_shard("gs://b/hangs-at-open.tar", "webdataset", timeout_s=0.2, sleep=lambda s: None))
    assert [(type(i), i.error_type) for i in items] == [(Failure, "read_timeout")]
    assert items[0].message.startswith(
        "gs://b/hangs-at-open.tar: reading failed before any member: no answer"
    )
    assert len(never_answers) == 1


def test_a_fifo_opened_through_a_filesystem_times_out(tmp_path):
    # faulty:// opens like Beam's LocalFileSystem, without our look before the open: the
    # open of a FIFO blocks (no writer), and the timeout makes it a row.
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        start = time.monotonic()
        with pytest.raises(ReadError) as info:
            read_bytes(faulty(fifo), timeout_s=0.2)
        assert info.value.error_type == "read_timeout" and time.monotonic() - start < 5
        assert FaultyFileSystem.opens[str(fifo)] == 1
    finally:
        # The open left behind returns once a writer comes and goes: no thread outlives the test.
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(writer)


class _Trickle(io.RawIOBase):
    """A stream of data that answers each read with at most 1000 bytes, and has no fileno."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        part = self._data[: min(len(buffer), 1000)]
        buffer[: len(part)] = part
        self._data = self._data[len(part) :]
        return len(part)


@pytest.mark.parametrize("length", [0, 1, 999, 1000, 1001, 3 * 2**20 + 7])
def test_read_up_to_gives_at_most_the_limit_whatever_the_file(tmp_path, length):
    from pipeline.storage import read_up_to

    data = os.urandom(length)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for limit in (0, 1, 1000, length, length + 1, 10 * 2**20):
        with open(path, "rb") as handle:  # local: one buffer of the file's size
            assert read_up_to(handle, limit) == data[:limit], (length, limit)
        # No fileno, short reads: reads that grow until the limit or the end.
        assert read_up_to(io.BufferedReader(_Trickle(data)), limit) == data[:limit], (length, limit)
        assert read_up_to(_Trickle(data), limit) == data[:limit], (length, limit)


def test_reads_reuse_their_threads_and_a_blocked_one_holds_up_nothing():
    from pipeline import storage

    # One call after another: one reader thread does them all (no thread started per read).
    # (Thread objects, kept alive here, so that no identity is reused.)
    threads = [storage.within(5, threading.current_thread) for _ in range(20)]
    assert len({id(thread) for thread in threads}) == 1 and threads[0] is not threading.current_thread()
    gate = threading.Event()
    try:
        with pytest.raises(storage.ReadTimeout):
            storage.within(0.2, gate.wait)  # blocks its thread until the gate opens
        # The blocked thread is not handed the next call: another answers at once.
        start = time.monotonic()
        assert storage.within(5, threading.current_thread) not in (threading.current_thread(), threads[0])
        assert time.monotonic() - start < 4
    finally:
        gate.set()
    # And calls after it still start no thread of their own.
    readers = sum(thread.name == "vgg16-read" for thread in threading.enumerate())
    for _ in range(20):
        storage.within(5, threading.get_ident)
    assert sum(thread.name == "vgg16-read" for thread in threading.enumerate()) == readers


def test_classify_the_new_permanent_errors():
    assert classify(OSError(errno.ELOOP, "Too many levels of symbolic links")) == "symlink_loop"
    assert classify(IsADirectoryError(errno.EISDIR, "Is a directory")) == "not_a_file"
    assert classify(NotADirectoryError(errno.ENOTDIR, "Not a directory")) == "not_found"
    assert classify(OSError("[Errno 40] Too many levels of symbolic links: '/p/a'")) == "symlink_loop"


# ------------------------------------------------------------------- member names that are not UTF-8


def test_a_tar_member_name_that_is_not_utf8_is_a_row(tmp_path):
    # tarfile hands the name's byte \xe9 over as a surrogate escape; its key is
    # percent-encoded behind '%' (pipeline.contract.key_uri), valid names unchanged.
    shard = tmp_path / "odd.tar"
    write_tar(shard, [("caf\udce9.jpg", b"one"), ("plain.jpg", b"two"), ("%20.jpg", b"three")])
    items = list(read_shard(str(shard), "webdataset"))
    assert items == [
        Member(f"{shard}#%caf%E9", b"one"),
        Member(f"{shard}#plain", b"two"),
        Member(f"{shard}#%%2520", b"three"),
    ]
    assert len({image_id(i.uri) for i in items}) == 3


def test_a_parquet_key_that_is_not_utf8_is_a_row(tmp_path):
    # A binary key column: b"k\xff" is not UTF-8 (spelled), b"ok" is (as it is).
    shard = tmp_path / "keys.parquet"
    write_parquet(shard, [{"key": pa.array([b"k\xff", b"ok"], pa.binary()), "jpg": [b"one", b"two"]}])
    items = list(read_shard(str(shard), "parquet", key_field="key"))
    assert items == [Member(f"{shard}#%k%FF", b"one"), Member(f"{shard}#ok", b"two")]


def test_the_report_shows_a_spelled_uris_thumbnail(tmp_path):
    # pipeline.report opens the uri a row holds: a file:// spelling opens the Latin-1 name.
    with open(os.fsencode(tmp_path) + b"/" + LATIN1, "wb") as handle:
        handle.write((SAMPLES / "coffee.jpg").read_bytes())
    src, width, height = thumbnail(f"file://{tmp_path}/caf%E9.jpg", size=64)
    assert src.startswith("data:image/jpeg;base64,") and max(width, height) == 64
