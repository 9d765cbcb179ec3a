"""Options and YAML configs: defaults, command line over file, unknown keys refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.options import ConfigError, config_to_argv, parse_args
from tests.conftest import REPO

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
