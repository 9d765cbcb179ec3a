"""Options and YAML configs: defaults, command line over file, unknown keys refused."""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest

from pipeline.job import options
from pipeline.job.options import (
    ConfigError,
    FlagTable,
    VGGOptions,
    config_to_argv,
    job_parser,
    parse_args,
    resolve,
)
from pipeline.job.read.shards import InputConfig
from tests.conftest import REPO
from tests.pipeline.jobs import run_job
from tests.pipeline.servers import free_port

BASE = ["--input", "a/*.jpg", "--output", "out", "--weights", "w.npz"]


def test_defaults_and_beam_passthrough():
    args, beam_args = parse_args([*BASE, "--runner=DirectRunner", "--direct_num_workers=2"])
    assert (args.top_k, args.resize, args.precision, args.embeddings, args.batch_size) == (
        5,
        "squash",
        "float32",
        False,
        16,
    )
    assert args.min_batch_size == 16  # full batches unless asked otherwise
    assert args.input == ["a/*.jpg"]
    assert beam_args == ["--runner=DirectRunner", "--direct_num_workers=2"]


def test_command_line_wins_over_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "input: [x/*.png, y/*.png]\noutput: o\nweights: w.h5\ntop_k: 3\nembeddings: true\n"
        "runner: PortableRunner\nexperiments: [a, b]\n"
    )
    args, beam_args = parse_args(["--config", str(config), "--top_k", "2", "--input", "z/*"])
    assert (args.top_k, args.embeddings, args.weights, args.output) == (2, True, "w.h5", "o")
    assert args.input == ["z/*"]  # a list given on the command line replaces the file's
    assert "--runner=PortableRunner" in beam_args
    assert "--experiments=a" in beam_args and "--experiments=b" in beam_args


def test_flags_sharing_a_name_and_aliases():
    # save_main_session shares its dest with --no_save_main_session; true must set it.
    assert config_to_argv({"save_main_session": True}, []) == ["--save_main_session"]
    # The singular alias on the command line replaces the file's list too.
    assert config_to_argv({"experiments": ["a"]}, ["--experiment=b"]) == []


def test_unknown_config_key_is_an_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output: o\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['batchsize'\]"):
        parse_args(["--config", str(config)])
    with pytest.raises(ConfigError, match="must be true or false"):
        config_to_argv({"embeddings": "yes"}, [])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top_k", "0"], "argument --top_k: must be between 1 and 1000. Received: 0"),
        (
            ["--batch_size", "4", "--min_batch_size", "8"],
            "--min_batch_size must be between 1 and --batch_size",
        ),
        (
            ["--max_error_fraction", "2"],
            "argument --max_error_fraction: must be between 0.0 and 1.0. Received: 2",
        ),
        (["--batch_size", "0"], "--batch_size (max_batch_size) must be at least 1"),
    ],
)
def test_bad_values(extra, message):
    with pytest.raises(ConfigError) as error:
        parse_args([*BASE, *extra])
    assert message in str(error.value)


def test_input_format_and_its_fields():
    args, _ = parse_args(BASE)
    assert InputConfig.from_args(args) == InputConfig(
        patterns=("a/*.jpg",), format="files", max_bytes=256 * 2**20
    )
    args, _ = parse_args([*BASE, "--input_format", "parquet", "--image_field", "img", "--key_field", "id"])
    assert InputConfig.from_args(args) == InputConfig(
        patterns=("a/*.jpg",), format="parquet", image_field="img", key_field="id", max_bytes=256 * 2**20
    )
    # --input_list names shards with a shard format, as --input does.
    args, _ = parse_args(["--input_list", "l.txt", *BASE[2:], "--input_format", "tfrecord"])
    config = InputConfig.from_args(args)
    assert (config.input_list, config.format) == ("l.txt", "tfrecord")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--image_field", "jpg"],
            "--image_field names a part of a shard; it needs a shard format (--input_format "
            "webdataset|tfrecord|parquet). Received: --input_format files",
        ),
        (
            ["--input_format", "files", "--key_field", "key"],
            "--key_field names a part of a shard; it needs a shard format",
        ),
        (
            ["--input_format", "webdataset", "--key_field", "key"],
            "--key_field applies to tfrecord and parquet shards; a webdataset sample's key is its "
            "member names' (docs/inputs.md). Received: --key_field key",
        ),
    ],
)
def test_shard_fields_need_a_shard_format(extra, message):
    with pytest.raises(ConfigError) as error:
        parse_args([*BASE, *extra])
    assert str(error.value).startswith(message)


def test_unknown_input_format_is_refused(capsys):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, "--input_format", "zip"])
    assert str(info.value) == (
        "argument --input_format: invalid choice: 'zip' (choose from 'files', 'webdataset', 'tfrecord', "
        "'parquet')"
    )
    assert capsys.readouterr().err == ""  # argparse's usage block is never printed


def test_missing_required():
    with pytest.raises(ConfigError, match="no input"):
        parse_args(["--output", "o", "--weights", "w"])


def test_shipped_configs_are_valid():
    from pipeline.job.options import load_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        config_to_argv(load_config(str(path)), [])  # raises on any unknown key


def test_help_lists_own_options_with_defaults():
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0
    for fragment in (
        "--input",
        "--input_list",
        "--embeddings",
        "--top_k",
        "(default: 5)",
        "--resize",
        "(default: squash)",
        "--batch_size",
        "--config",
        "--runner",
    ):
        assert fragment in done.stdout, fragment


def test_help_documents_the_reliability_options(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--resume",
        "previous failures stay failures unless --retry_errors",
        "--retry_errors",
        "--decode_isolation {subprocess,none}",
        "(default: subprocess)",
        "--decode_timeout_s",
        "--max_input_bytes",
        "--read_timeout_s",
        "--max_error_fraction",
        "1.0 never fails",
    ):
        assert fragment in text, fragment


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        # The job's own flag, misspelled: Beam only logs such flags and runs on without them.
        (["--embedings"], "unrecognized option --embedings (did you mean --embeddings?)"),
        # One of Beam's, misspelled, with a value.
        (
            ["--direct_num_worker=2"],
            "unrecognized option --direct_num_worker (did you mean --direct_num_workers?)",
        ),
        (["--no_such_flag_at_all", "3"], "unrecognized option --no_such_flag_at_all: neither"),
        (["stray"], "unrecognized argument 'stray'"),
    ],
)
def test_unknown_arguments_are_refused(typo, message):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, *typo])
    assert str(info.value).startswith(message), str(info.value)


def test_beam_flags_of_every_runner_pass(tmp_path):
    # Flags that only one runner reads are still known to Beam's option classes.
    jar = tmp_path / "job-server.jar"
    jar.touch()  # FlinkRunner is refused without a job server to start (below)
    _, beam_args = parse_args(
        [
            *BASE,
            "--runner=FlinkRunner",
            "--flink_master=127.0.0.1:8081",
            f"--flink_job_server_jar={jar}",
            f"--job_server_java_launcher={sys.executable}",  # any program: no Java needed here
            "--parallelism=2",
            "--environment_type=EXTERNAL",
            "--environment_config=127.0.0.1:5000",
            "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1",
            "--experiments",
            "use_runner_v2",
            "--s3_endpoint_url=http://127.0.0.1:9000",
        ]
    )
    assert "--parallelism=2" in beam_args and "use_runner_v2" in beam_args


def test_flink_job_server_flags_pass_with_the_flink_runner_only(tmp_path):
    # Beam's portable runner learns these from the Flink job server only when it submits a
    # job; without the list here, --checkpointing_interval was refused as unknown.
    jar = tmp_path / "job-server.jar"
    jar.touch()
    flink = [*FLINK, f"--flink_job_server_jar={jar}", f"--job_server_java_launcher={sys.executable}"]
    given = ["--checkpointing_interval=2000", "--externalized_checkpoints_enabled", "--state_backend=rocksdb"]
    _, beam_args = parse_args([*BASE, *flink, *given])
    assert all(flag in beam_args for flag in given)
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, "--checkpointing_interval=2000"])
    assert str(info.value) == (
        "--checkpointing_interval is an option of Beam's Flink job server: it applies with "
        "--runner=FlinkRunner (docs/flink.md)."
    )
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, *flink, "--checkpointing_interval=often"])
    assert str(info.value) == "argument --checkpointing_interval: invalid int value: 'often'"
    with pytest.raises(ConfigError, match=r"^unrecognized option --checkpointing_intervall \(did you mean "):
        parse_args([*BASE, *flink, "--checkpointing_intervall=2000"])


def test_a_typo_costs_seconds_and_writes_nothing(tmp_path, npz_path, photo_dir):
    # As a user meets it: exit status 2, one error line, no output folder, no traceback.
    out = tmp_path / "out"
    done = run_job(
        *("--input", f"{photo_dir}/*", "--output", out, "--weights", npz_path, "--embedings"), check=False
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: unrecognized option --embedings (did you mean --embeddings?): neither this job nor Beam's "
        "pipeline options know it; nothing was run (see --help)."
    ]
    assert not out.exists()


# --------------------------------------------------------------- one line per bad value

# Every flag of the job whose value argparse types or chooses, with values it must refuse:
# of the wrong type, out of range, or not among the choices. --batch_size is 16 in BASE, so
# --min_batch_size 17 is over it.
BAD_VALUES = {
    "--input_format": ["zip"],
    "--top_k": ["abc", "0", "1001"],
    "--resize": ["stretch"],
    "--precision": ["float64"],
    "--batch_size": ["0", "-1", "x"],
    "--min_batch_size": ["0", "17", "1.5"],
    "--model_copies": ["0", "x"],
    "--conv_batch": ["0", "x"],
    "--max_error_fraction": ["2", "-0.1", "nan", "x"],
    "--decode_isolation": ["thread"],
    "--decode_threads": ["0", "x"],
    "--decode_timeout_s": ["-1", "x"],
    "--decode_device": ["tpu"],
    "--max_input_bytes": ["0", "x"],
    "--read_timeout_s": ["0", "-1", "nan", "x"],
    # Without --watch each is refused as such (tests/pipeline/job/test_watch.py: with it).
    "--poll_interval_s": ["0", "nan", "x"],
    "--window_s": ["0.5", "x"],
    "--settle_s": ["-1", "x"],
    "--window_shards": ["0", "x"],
}


def test_every_constrained_flag_has_bad_values_here():
    # A new flag with a type= or choices= must be added to BAD_VALUES, and so be tested below.
    declared = FlagTable([VGGOptions]).declared
    assert sorted(f.option_strings[0] for f in declared if f.constrained) == sorted(BAD_VALUES)


@pytest.mark.parametrize(
    ("flag", "value"), [(flag, value) for flag, values in BAD_VALUES.items() for value in values]
)
def test_a_bad_value_is_one_line_naming_the_flag_and_the_value(flag, value, capsys):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, flag, value])
    message = str(info.value)
    assert flag in message and value in message, message
    assert "\n" not in message
    assert capsys.readouterr().err == ""  # argparse printed nothing: no usage block


@pytest.mark.parametrize("flag", sorted(BAD_VALUES))
def test_a_flag_without_its_value_is_one_line(flag):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, flag])
    assert str(info.value) == f"argument {flag}: expected one argument"


def test_a_bad_value_of_a_beam_flag_is_one_line(capsys):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, "--direct_num_workers=abc"])
    assert str(info.value) == "argument --direct_num_workers: invalid int value: 'abc'"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--batch_size", "0"], "error: --batch_size (max_batch_size) must be at least 1: the largest "),
        (["--input_format", "zip"], "error: argument --input_format: invalid choice: 'zip' (choose from "),
        (["--top_k", "abc"], "error: argument --top_k: invalid int value: 'abc'"),
        (["--decode_timeout_s", "-1"], "error: --decode_timeout_s (timeout_s) must be at least 0 seconds"),
        (["--direct_num_workers=abc"], "error: argument --direct_num_workers: invalid int value: 'abc'"),
    ],
)
def test_a_bad_value_on_the_command_line_is_one_error_line_and_status_2(tmp_path, extra, line):
    out = tmp_path / "out"
    done = run_job("--input", "a/*.jpg", "--output", out, "--weights", "w.npz", *extra, check=False)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr  # no usage block, no traceback
    assert done.stderr.startswith(line), done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batch_size: 0\n", "--batch_size (max_batch_size) must be at least 1"),
        ("top_k: abc\n", "argument --top_k: invalid int value: 'abc'"),
        ("top_k: [1, 2]\n", "config option 'top_k' takes one value. Received: [1, 2]"),
        ("input: [a\n", "is not valid YAML: while parsing a flow sequence"),
    ],
)
def test_a_bad_value_in_a_config_file_is_one_line(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, "--config", str(config)])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_resolve_returns_new_values_and_leaves_its_input_alone():
    parsed, _ = job_parser().parse_known_args(BASE)
    assert parsed.min_batch_size is None
    args = resolve(parsed)
    assert (args.min_batch_size, parsed.min_batch_size) == (16, None)  # --batch_size's 16, on the copy
    assert args is not parsed and vars(args) == {**vars(parsed), "min_batch_size": 16}


def test_input_config_checks_its_own_fields():
    with pytest.raises(ConfigError, match=r"^no input: pass --input PATTERN"):
        InputConfig()
    with pytest.raises(
        ConfigError, match=r"--max_input_bytes \(max_bytes\) must be at least 1 byte\. Received: 0"
    ):
        InputConfig(patterns=("a",), max_bytes=0)
    with pytest.raises(ConfigError, match=r"--input_format \(format\) must be one of files\|webdataset"):
        InputConfig(patterns=("a",), format="zip")
    with pytest.raises(ConfigError, match="--key_field applies to tfrecord and parquet shards"):
        InputConfig(patterns=("a",), format="webdataset", key_field="key")
    args = argparse.Namespace(
        input=None,
        input_list="l.txt",
        input_format="tfrecord",
        image_field="img",
        key_field="id",
        max_input_bytes=7,
        read_timeout_s=9.0,
    )
    assert InputConfig.from_args(args) == InputConfig(
        input_list="l.txt",
        format="tfrecord",
        image_field="img",
        key_field="id",
        max_bytes=7,
        read_timeout_s=9.0,
    )


def test_no_private_argparse_or_beam_attributes_in_pipeline():
    # The public API or a few lines of our own (STYLE.md): argparse's actions and action
    # classes and Beam's parser class are internals that change between releases.
    private = re.compile(
        r"\._actions\b|\._option_string_actions\b|\bargparse\._|_BeamArgumentParser|_Store\w*Action"
    )
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "pipeline").rglob("*.py"))  # pipeline/job/options.py is the parser
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert found == []


# ------------------------------------------------ FlinkRunner: a job server, or one error line

FLINK = ["--runner=FlinkRunner", "--flink_master=127.0.0.1:8081", "--flink_version=1.19"]


def beams_jar_name() -> str:
    # The name Beam's FlinkRunner fetches for --flink_version 1.19 and the installed Beam.
    return f"beam-runners-flink-1.19-job-server-{beam.__version__}.jar"


@contextlib.contextmanager
def serving(handler):
    """An HTTP server on 127.0.0.1 with `handler`, in threads of its own until the end: its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def http_server(folder, *, answer: bool = True):
    """http://127.0.0.1:PORT serving `folder`; with answer=False it accepts connections and never answers."""

    class Silent(socketserver.BaseRequestHandler):
        def handle(self):
            stop.wait()  # holds the connection open until the test is done

    stop = threading.Event()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with serving(handler if answer else Silent) as port:
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()


@pytest.mark.beam_version
def test_flink_without_a_jar_uses_the_jar_beam_fetches_into_its_cache(tmp_path):
    # Beam's FlinkRunner looks in --jar_cache_dir for the jar of its own release before it
    # downloads it; the launcher resolves the same name, so a cached jar is all it needs.
    (tmp_path / beams_jar_name()).write_bytes(b"a cached job server")
    _, beam_args = parse_args([*BASE, *FLINK, f"--jar_cache_dir={tmp_path}"])
    assert f"--jar_cache_dir={tmp_path}" in beam_args


@pytest.mark.beam_version
def test_a_jar_url_is_fetched_into_beams_cache_on_the_launcher(tmp_path):
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    (served / "job-server.jar").write_bytes(b"jar bytes")
    with http_server(served) as url:
        jar = f"--flink_job_server_jar={url}/job-server.jar"
        parse_args([*BASE, *FLINK, jar, f"--jar_cache_dir={cache}"])
    # Where Beam's JavaJarJobServer looks for it when the job starts: it is not fetched twice.
    assert (cache / "job-server.jar").read_bytes() == b"jar bytes"
    with http_server(served) as url, pytest.raises(ConfigError) as info:
        parse_args([*BASE, *FLINK, f"--flink_job_server_jar={url}/missing.jar", f"--jar_cache_dir={cache}"])
    message = str(info.value)
    assert message.startswith("Beam's FlinkRunner could not fetch its Flink job server jar (")
    assert "404" in message and "\n" not in message
    assert "scripts/flink_setup.sh builds one and prints its path for --flink_job_server_jar=JAR" in message


@pytest.mark.beam_version
def test_a_jar_server_that_never_answers_fails_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(options, "JAR_FETCH_TIMEOUT_S", 1)
    began = time.monotonic()
    with http_server(tmp_path, answer=False) as url, pytest.raises(ConfigError, match="could not fetch"):
        parse_args([*BASE, *FLINK, f"--flink_job_server_jar={url}/x.jar", f"--jar_cache_dir={tmp_path}"])
    # Beam's own download has no timeout: without the launcher's it would wait forever.
    assert time.monotonic() - began < 60
    assert socket.getdefaulttimeout() is None  # the launcher's timeout ends with the fetch


def test_flink_needs_java_to_start_a_job_server(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_args([*BASE, *FLINK, f"--jar_cache_dir={tmp_path}", "--job_server_java_launcher=/no/such/java"])
    assert str(info.value).startswith(
        "--runner=FlinkRunner starts Beam's Flink job server with '/no/such/java', which is not installed"
    )
    jar = tmp_path / "missing.jar"
    with pytest.raises(ConfigError, match=r"^--flink_job_server_jar '.*missing.jar' is not a file; "):
        parse_args([*BASE, *FLINK, f"--flink_job_server_jar={jar}"])
    # A job server of one's own needs neither Java nor a jar here.
    parse_args([*BASE, *FLINK, "--job_endpoint=127.0.0.1:8099", "--job_server_java_launcher=/no/such/java"])


@pytest.mark.beam_version
def test_flink_without_a_reachable_jar_is_one_error_line_before_anything_runs(tmp_path):
    # As on a machine without network: every proxied download is refused at once (nothing
    # listens on the proxy's port), so Beam's fetch from Maven Central (and 2.77's mirror) fails.
    closed = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, https_proxy=closed, HTTPS_PROXY=closed, http_proxy=closed, HTTP_PROXY=closed)
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    out = tmp_path / "out"
    done = run_job(
        *("--input", "samples/*", "--output", out, "--weights", "w.npz", *FLINK),
        f"--jar_cache_dir={tmp_path / 'cache'}",
        check=False,
        env=env,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: Beam's FlinkRunner could not fetch its Flink job server jar (")
    assert f"/beam-runners-flink-1.19-job-server/{beam.__version__}/{beams_jar_name()}" in line
    assert line.endswith(
        "scripts/flink_setup.sh builds one and prints its path for --flink_job_server_jar=JAR, or pass "
        "--job_endpoint=HOST:PORT of a job server you run (docs/flink.md)."
    )
    assert not out.exists()


@contextlib.contextmanager
def flink_rest(jobs: dict[str, dict]):
    """http://127.0.0.1:PORT answering as a Flink cluster's REST API for `jobs` (jid: {name, state}).

    A cancel (PATCH /jobs/JID?mode=cancel) moves its job to CANCELLING, and the next look at it to CANCELED.
    """

    class Rest(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, body: dict):
            data = json.dumps(body).encode()
            self.send_response(202 if self.command == "PATCH" else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/jobs/overview":
                return self.answer({"jobs": [{"jid": jid, **job} for jid, job in jobs.items()]})
            job = jobs[self.path.removeprefix("/jobs/")]
            if job["state"] == "CANCELLING":
                job["state"] = "CANCELED"
            return self.answer({"state": job["state"]})

        def do_PATCH(self):
            jid, _, mode = self.path.removeprefix("/jobs/").partition("?mode=")
            assert mode == "cancel"
            jobs[jid]["state"] = "CANCELLING"
            self.answer({})

    with serving(Rest) as port:
        yield f"127.0.0.1:{port}"


def test_a_drained_watch_job_is_cancelled_on_the_flink_cluster():
    # Beam's job server ends its invocation on a cancel and leaves the Flink job running;
    # the launcher cancels the job of its name by the cluster's REST API.
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    given = PipelineOptions([])
    name = options.flink_job_name(given, "0f1e2d3c")  # Beam's Flink runner names the job after it
    assert name == given.view_as(GoogleCloudOptions).job_name == "vgg16-watch-0f1e2d3c"
    assert options.flink_job_name(PipelineOptions(["--job_name=mine"]), "0f1e2d3c") == "mine"
    submitted = time.time()
    started = 1000 * (submitted + 5)
    jobs = {
        "a1": {"name": name, "state": "RUNNING", "start-time": started},
        "b2": {"name": "vgg16-watch-other", "state": "RUNNING", "start-time": started},
        "c3": {"name": name, "state": "FINISHED", "start-time": started - 3_600_000},  # an earlier job's
        "d4": {"name": name, "state": "RUNNING", "start-time": started - 3_600_000},  # not this launch's
    }
    with flink_rest(jobs) as master:
        options.cancel_flink_job(PipelineOptions([f"--flink_master={master}"]), name, submitted)
    states = {jid: job["state"] for jid, job in jobs.items()}
    assert states == {"a1": "CANCELED", "b2": "RUNNING", "c3": "FINISHED", "d4": "RUNNING"}
    # A job that runs inside the job server ([auto], [local]) has no cluster to ask; one that
    # does not answer is a warning: the launcher is stopping anyway.
    options.cancel_flink_job(PipelineOptions(["--flink_master=[auto]"]), name, submitted)
    options.cancel_flink_job(PipelineOptions([f"--flink_master=127.0.0.1:{free_port()}"]), name, submitted)


def test_a_job_on_a_portable_runner_is_followed_past_beams_five_minutes():
    # Beam follows a job on a portable runner (Flink, Prism) through streams whose deadline is
    # --job_server_timeout, 300 s by default: a longer job failed its launcher there (seen on
    # Prism with --job_server_timeout=6 and a 13 s job: DEADLINE_EXCEEDED, exit status 1).
    from apache_beam.options.pipeline_options import PortableOptions

    def deadline(*extra):
        args, beam_args = parse_args([*BASE, *extra])
        return options.pipeline_options(args, beam_args).view_as(PortableOptions).job_server_timeout

    assert deadline() == options.JOB_STREAM_DEADLINE_S >= 10 * 365 * 24 * 3600
    assert deadline("--watch") == options.JOB_STREAM_DEADLINE_S
    assert deadline("--job_server_timeout=60") == 60  # the user's own value stays


def test_a_job_endpoint_that_does_not_answer_is_one_error_line(tmp_path):
    closed = f"127.0.0.1:{free_port()}"
    done = run_job(
        *("--input", "samples/*", "--output", tmp_path / "out", "--weights", "w.npz"),
        "--runner=PortableRunner", f"--job_endpoint={closed}",
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: --job_endpoint '{closed}' does not answer (")
    assert not (tmp_path / "out").exists()


def test_a_job_endpoint_that_answers_passes():
    from apache_beam.options.pipeline_options import PipelineOptions

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        options.check_job_endpoint(PipelineOptions([f"--job_endpoint=127.0.0.1:{port}"]))
    options.check_job_endpoint(PipelineOptions(["--job_endpoint=embed"]))  # Beam's own, in process
    options.check_job_endpoint(PipelineOptions([]))
