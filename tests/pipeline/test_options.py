"""Options and YAML configs: defaults, command line over file, unknown keys refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.options import ConfigError, config_to_argv, input_config, parse_args
from pipeline.shards import InputConfig
from tests.conftest import REPO
from tests.pipeline.jobs import run_job

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
        (["--top_k", "0"], "--top_k must be between 1 and 1000. Received: 0"),
        (
            ["--batch_size", "4", "--min_batch_size", "8"],
            "--min_batch_size must be between 1 and --batch_size",
        ),
        (["--max_error_fraction", "2"], "--max_error_fraction must be in [0, 1]. Received: 2.0"),
    ],
)
def test_bad_values(extra, message):
    with pytest.raises(ConfigError) as error:
        parse_args([*BASE, *extra])
    assert message in str(error.value)


def test_input_format_and_its_fields():
    args, _ = parse_args(BASE)
    assert input_config(args) == InputConfig(patterns=("a/*.jpg",), format="files", max_bytes=256 * 2**20)
    args, _ = parse_args([*BASE, "--input_format", "parquet", "--image_field", "img", "--key_field", "id"])
    assert input_config(args) == InputConfig(
        patterns=("a/*.jpg",), format="parquet", image_field="img", key_field="id", max_bytes=256 * 2**20
    )
    # --input_list names shards with a shard format, as --input does.
    args, _ = parse_args(["--input_list", "l.txt", *BASE[2:], "--input_format", "tfrecord"])
    assert (input_config(args).input_list, input_config(args).format) == ("l.txt", "tfrecord")


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
    with pytest.raises(SystemExit) as info:
        parse_args([*BASE, "--input_format", "zip"])
    assert info.value.code == 2
    assert "argument --input_format: invalid choice: 'zip' (choose from 'files', 'webdataset', " in (
        capsys.readouterr().err
    )


def test_missing_required():
    with pytest.raises(ConfigError, match="no input"):
        parse_args(["--output", "o", "--weights", "w"])


def test_shipped_configs_are_valid():
    from pipeline.options import load_config

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
    jar.touch()  # FlinkRunner is refused without a job server to start (test_flink.py)
    _, beam_args = parse_args(
        [
            *BASE,
            "--runner=FlinkRunner",
            "--flink_master=127.0.0.1:8081",
            f"--flink_job_server_jar={jar}",
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
