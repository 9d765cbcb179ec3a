"""The job's own options (a PipelineOptions subclass) and YAML run configurations under configs/.

Each config a run is made of (read.shards.InputConfig, decode.DecodeConfig,
model_handler.ModelConfig) checks its own fields where it is made, from `from_args`; what
is left here is parsing, the rules that span several flags, and the flags no config owns.
A user's mistake is one ConfigError (one `error:` line and exit status 2 in pipeline.run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

import yaml
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.runners.portability.flink_runner import FlinkJarJobServer
from apache_beam.runners.portability.job_server import JavaJarJobServer
from apache_beam.utils import subprocess_server

import vgg
from pipeline import ConfigError, contract
from pipeline.job.decode import DECODE_DEVICES, ISOLATION_MODES, DecodeConfig
from pipeline.job.model_handler import ModelConfig
from pipeline.job.read.shards import INPUT_FORMATS, InputConfig
from pipeline.job.watch import POLL_INTERVAL_S, SETTLE_S, WINDOW_S, WatchConfig
from pipeline.storage import MAX_INPUT_BYTES, READ_TIMEOUT_S
from vgg.architecture import CPU_CONV_BATCH, NUM_CLASSES, PRECISIONS
from vgg.preprocess import RESIZE_MODES
from vgg.sandbox import DECODE_TIMEOUT_S
from vgg.weights import WeightsInfo

log = logging.getLogger(__name__)

# How long one network operation of the launcher's fetch of Beam's Flink job-server jar may
# stall before the fetch fails (the whole download of the jar takes longer).
JAR_FETCH_TIMEOUT_S = 60
# The launcher's deadline for following a job on a portable runner (--job_server_timeout,
# when not given): ten years, i.e. none.
JOB_STREAM_DEADLINE_S = 10 * 365 * 24 * 3600
# One call to a Flink cluster's REST API.
REST_TIMEOUT_S = 30
# How long the launcher waits for an explicit --job_endpoint to accept a connection.
JOB_ENDPOINT_CONNECT_S = 30
# Beam's S3 flags that carry credentials; the environment or an IAM role is the place for them.
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")


class OptionParser(argparse.ArgumentParser):
    """argparse whose every complaint is one ConfigError, not a usage block and sys.exit(2).

    pipeline.run prints it as one `error:` line (exit status 2), as it does every other
    mistake found on the launcher; --help still prints and exits as usual.
    """

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)

    def add_value_provider_argument(self, *args, **kwargs) -> argparse.Action:
        """How some of Beam's options classes declare a flag; here it is a plain one."""
        return self.add_argument(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag as an options class declared it: what a config file's `dest: value` becomes."""

    dest: str
    option_strings: tuple[str, ...]
    action: str  # argparse's action name: "store", "store_true", "store_false", "append", ...
    nargs: int | str | None
    constrained: bool  # its value must be of a type or among choices (argparse's type=, choices=)

    @property
    def spelling(self) -> str:
        """The spelling written for a config key: the longest (--experiments, not --experiment)."""
        return max(self.option_strings, key=len) if self.option_strings else f"--{self.dest}"


class FlagTable(OptionParser):
    """A parser of the flags of options classes (default: Beam's and this job's), and their table.

    Each flag is recorded as it is added (`declared`), so nothing reads argparse's
    internals. No abbreviations: a misspelled Beam flag is an error, not a guess.
    """

    def __init__(self, classes: Iterable[type[PipelineOptions]] | None = None) -> None:
        self.declared: list[Flag] | None = None  # None while argparse builds its own groups
        super().__init__(add_help=False, allow_abbrev=False, conflict_handler="resolve")
        self.declared = []
        if classes is None:
            # As Beam's PipelineOptions.get_all_options gathers them: the last definition of
            # a class wins. Then the options Beam learns from the Flink job server only when
            # it submits a job (FlinkJobServerFlags).
            beams = {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values()
            classes = [*beams, FlinkJobServerFlags]
        for cls in classes:
            # The hook through which every options class, VGGOptions too, declares its flags.
            cls._add_argparse_args(self)

    def add_argument_group(self, *args, **kwargs):
        if self.declared is None:
            return super().add_argument_group(*args, **kwargs)
        return self  # groups only shape --help, which this parser never prints

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if self.declared is not None:
            kind = kwargs.get("action", "store")
            self.declared.append(
                Flag(
                    dest=action.dest,
                    option_strings=tuple(action.option_strings),
                    action=kind if isinstance(kind, str) else kind.__name__,
                    nargs=kwargs.get("nargs"),
                    constrained="type" in kwargs or "choices" in kwargs,
                )
            )
        return action

    def by_dest(self) -> dict[str, Flag]:
        """Every option name with its flag.

        Where several flags share a name (--save_main_session and --no_save_main_session),
        the one spelled like the name is what a config file's `name: value` means.
        """
        flags: dict[str, Flag] = {}
        for flag in self.declared or ():
            if flag.dest not in flags or f"--{flag.dest}" in flag.option_strings:
                flags[flag.dest] = flag
        return flags

    def spellings(self) -> list[str]:
        """Every flag as it may be typed, aliases too (--experiment, --no_save_main_session)."""
        return [spelling for flag in self.declared or () for spelling in flag.option_strings]


# The options of Beam's Flink job server that Python's FlinkRunnerOptions does not declare
# (Java's FlinkPipelineOptions and VersionDependentFlinkPipelineOptions: name, type,
# default), as the job server describes them to Beam's portable runner, which adds them to
# its parser only when it submits the job. Beam types them from that description: INTEGER
# an int, BOOLEAN a bare flag that turns the default around, STRING as given.
# tests/pipeline/test_flink.py compares this list with a live job server's description.
FLINK_JOB_SERVER_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("allow_non_restored_state", "BOOLEAN", "false"),
    ("attached_mode", "BOOLEAN", "true"),
    ("auto_balance_write_files_sharding_enabled", "BOOLEAN", "false"),
    ("auto_watermark_interval", "INTEGER", ""),
    ("checkpoint_timeout_millis", "INTEGER", "-1"),
    ("checkpointing_interval", "INTEGER", "-1"),
    ("checkpointing_mode", "STRING", "EXACTLY_ONCE"),
    ("disable_metrics", "BOOLEAN", "false"),
    ("enable_stable_input_drain", "BOOLEAN", "false"),
    ("execution_mode_for_batch", "STRING", "PIPELINED"),
    ("execution_retry_delay", "INTEGER", "-1"),
    ("externalized_checkpoints_enabled", "BOOLEAN", "false"),
    ("fail_on_checkpointing_errors", "BOOLEAN", "true"),
    ("faster_copy", "BOOLEAN", "false"),
    ("file_input_split_max_size_m_b", "INTEGER", "0"),
    ("finish_bundle_before_checkpointing", "BOOLEAN", "false"),
    ("flink_conf_dir", "STRING", ""),
    ("force_unaligned_checkpoint_enabled", "BOOLEAN", "false"),
    ("job_check_interval_in_secs", "INTEGER", "5"),
    ("latency_tracking_interval", "INTEGER", "0"),
    ("max_bundle_size", "INTEGER", "MaxBundleSizeFactory"),
    ("max_bundle_time_mills", "INTEGER", "MaxBundleTimeFactory"),
    ("min_pause_between_checkpoints", "INTEGER", "-1"),
    ("num_concurrent_checkpoints", "INTEGER", "1"),
    ("number_of_execution_retries", "INTEGER", "-1"),
    ("object_reuse", "BOOLEAN", "false"),
    ("operator_chaining", "BOOLEAN", "true"),
    ("re_iterable_group_by_key_result", "BOOLEAN", "false"),
    ("report_checkpoint_duration", "STRING", ""),
    ("retain_externalized_checkpoints_on_cancellation", "BOOLEAN", "false"),
    ("savepoint_path", "STRING", ""),
    ("shutdown_sources_after_idle_ms", "INTEGER", "-1"),
    ("state_backend", "STRING", ""),
    ("state_backend_factory", "STRING", ""),
    ("state_backend_storage_path", "STRING", ""),
    ("unaligned_checkpoint_enabled", "BOOLEAN", "false"),
    ("use_data_stream_for_batch", "BOOLEAN", "false"),
)
FLINK_RUNNERS = ("flink", "flinkrunner", "portablerunner")


class FlinkJobServerFlags:
    """FLINK_JOB_SERVER_OPTIONS declared as Beam's portable runner declares them, for FlagTable."""

    @staticmethod
    def _add_argparse_args(parser: argparse.ArgumentParser) -> None:
        for name, kind, default in FLINK_JOB_SERVER_OPTIONS:
            if kind == "BOOLEAN":
                parser.add_argument(f"--{name}", action="store_false" if default == "true" else "store_true",
                                    default=None)  # fmt: skip
            elif kind == "INTEGER":
                parser.add_argument(f"--{name}", type=int, default=None)
            else:
                parser.add_argument(f"--{name}", default=None)


def runner_name(options: PipelineOptions) -> str:
    """--runner, lower case, without its module (flinkrunner, dataflowrunner, ...); '' when not given."""
    return (options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, refused (one line naming the flag) outside [low, high]."""

    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}. Received: {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


class VGGOptions(PipelineOptions):
    """Options of `python -m pipeline.run`; every standard Beam option passes through untouched."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("vgg16 job")
        group.add_argument(
            "--input",
            action="append",
            default=None,
            help="file pattern (local, gs://, s3://; '**' recurses); repeat for several",
        )
        group.add_argument(
            "--input_list",
            default=None,
            help="text file of URIs, one per line (of shards, with a shard --input_format)",
        )
        group.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default=INPUT_FORMATS[0],
            help="'files': one image per file. Otherwise --input and --input_list name shards, every "
            "member of which is an input: tar files (webdataset), TFRecord files of tf.train.Example, "
            "or Parquet files with an image column (docs/inputs.md)",
        )
        group.add_argument(
            "--image_field",
            default=None,
            help="with a shard format: the image's member suffix (webdataset), feature (tfrecord) or "
            "column (parquet); default: a sample's first member with an image extension (webdataset), "
            "the first present of image/encoded, image, jpg (tfrecord) or of jpg, image, image_bytes "
            "(parquet)",
        )
        group.add_argument(
            "--key_field",
            default=None,
            help="with tfrecord or parquet: the feature or column of each record's key, used in its uri "
            "(SHARD#KEY); default: the record's index in the shard",
        )
        group.add_argument("--output", default=None, help="output directory (local, gs://, s3://)")
        group.add_argument("--weights", default=None, help="npz, Keras h5 (local or remote), or 'imagenet'")
        group.add_argument("--weights_sha256", default=None, help="refuse weights with another sha256")
        group.add_argument("--embeddings", action="store_true", default=False, help="also write fc7")
        group.add_argument("--top_k", type=_bounded(int, 1, NUM_CLASSES), default=5, help="labels per image")
        group.add_argument("--resize", choices=RESIZE_MODES, default=RESIZE_MODES[0], help="resize mode")
        group.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0], help="compute precision")
        group.add_argument("--jit", action="store_true", default=False, help="compile the model with XLA")
        group.add_argument("--batch_size", type=int, default=16, help="largest inference batch")
        group.add_argument(
            "--min_batch_size",
            type=int,
            default=None,
            help="smallest inference batch (default: --batch_size, i.e. full batches, which are "
            "faster than letting Beam's batcher grow from 1; see docs/benchmarks.md)",
        )
        group.add_argument(
            "--share_model",
            action="store_true",
            default=False,
            help="one model per machine, shared by all SDK processes (Beam's large_model), "
            "instead of one per process: for GPU workers with many vCPUs",
        )
        group.add_argument(
            "--conv_batch",
            type=int,
            default=None,
            help="images convolved at once within a batch (the dense layers see the whole batch); "
            f"fewer use less memory for the same outputs; default: {CPU_CONV_BATCH} on a CPU, the whole "
            "batch on a GPU",
        )
        group.add_argument(
            "--model_copies",
            type=int,
            default=None,
            help="this many models per machine, shared by all SDK processes (Beam's model_copies): "
            "several on one GPU, e.g. with NVIDIA MPS (docs/dataflow.md); default: one per process, "
            "or one per machine with --share_model",
        )
        group.add_argument(
            "--max_error_fraction",
            type=_bounded(float, 0.0, 1.0),
            default=1.0,
            help="exit with status 1 (after writing every row) when more than this fraction of the "
            "inputs failed; 1.0 never fails, since bad files are expected and each is an errors row "
            "(configs/dataflow_gpu.yaml and flink.yaml use 0.01)",
        )
        group.add_argument(
            "--resume",
            action="store_true",
            default=False,
            help="keep what --output already holds and label only inputs whose image_id is in "
            "neither of its tables (previous failures stay failures unless --retry_errors); the "
            "run's commit appends its rows. Without --resume, a run's commit replaces both tables.",
        )
        group.add_argument(
            "--retry_errors",
            action="store_true",
            default=False,
            help="with --resume: also label again the inputs listed in the old errors shards; their "
            "old rows are dropped (the old errors shards are rewritten), so each input stays once",
        )
        group.add_argument(
            "--decode_isolation",
            choices=ISOLATION_MODES,
            default=ISOLATION_MODES[0],
            help="'subprocess': decode in a child process per decoder thread, so a crash in native "
            "image code is one errors row (error_type crashed), not a dead worker (its cost per "
            "image: docs/reliability.md). 'none': decode in the worker itself (trusted inputs, "
            "decode-bound GPU runs)",
        )
        group.add_argument(
            "--decode_threads",
            type=int,
            default=1,
            help="decoder threads per worker thread (each with its own child process when "
            "isolated); they decode ahead while the model runs, so decoding overlaps inference",
        )
        group.add_argument(
            "--decode_timeout_s",
            type=float,
            default=DECODE_TIMEOUT_S,
            help="with --decode_isolation subprocess: an image that takes longer to decode becomes "
            "an errors row (error_type timeout); 0 for no limit",
        )
        group.add_argument(
            "--decode_device",
            choices=DECODE_DEVICES,
            default=DECODE_DEVICES[0],
            help="'gpu': decode and resize JPEGs in batches on the worker's GPU with NVIDIA DALI (the "
            "'gpu-decode' extra); every image it cannot take (other formats, CMYK, broken files) goes "
            "through the CPU decoder as with 'cpu', and a worker without a GPU decodes all on the CPU",
        )
        group.add_argument(
            "--max_input_bytes",
            type=int,
            default=MAX_INPUT_BYTES,
            help="larger input files become errors rows (read, too_large) without being read to the end",
        )
        group.add_argument(
            "--read_timeout_s",
            type=float,
            default=READ_TIMEOUT_S,
            help="a read that takes longer becomes an errors row (read, read_timeout), not retried: "
            "reading a whole file, or opening a shard or any one read from it (1 MiB); so no "
            "stuck storage or special file holds a worker forever",
        )
        group.add_argument(
            "--watch",
            action="store_true",
            default=False,
            help="run unbounded (a streaming job): label files as they land under the --input patterns, "
            "committing each window as one append to --output; a restarted job skips what the output "
            "holds (docs/watch.md)",
        )
        group.add_argument(
            "--poll_interval_s",
            type=float,
            default=None,
            help=f"with --watch: seconds between listings of the --input patterns (default "
            f"{POLL_INTERVAL_S:g})",
        )
        group.add_argument(
            "--window_s",
            type=float,
            default=None,
            help=f"with --watch: seconds of arrivals committed together as one append (default {WINDOW_S:g})",
        )
        group.add_argument(
            "--settle_s",
            type=float,
            default=None,
            help="with --watch: a local file modified more recently than this is left for a later poll, "
            f"as it may still be being written (default {SETTLE_S:g}; 0 takes files at once)",
        )
        group.add_argument(
            "--watch_pubsub",
            default=None,
            help="with --watch and gs:// --input patterns: take new objects from this Pub/Sub "
            "subscription (projects/P/subscriptions/S) of the bucket's notifications instead of "
            "listing the bucket at every poll (Dataflow; docs/watch.md)",
        )
        group.add_argument(
            "--window_shards",
            type=int,
            default=None,
            help="with --watch: data files per table per window, written in parallel (default 1)",
        )
        group.add_argument("--config", default=None, help="YAML file of these and Beam's options")


def known_option_names() -> dict[str, Flag]:
    """Every option name Beam and this job know, with the flag a config file's key means."""
    return FlagTable().by_dest()


def config_to_argv(config: dict, given: Sequence[str]) -> list[str]:
    """Turns a config mapping into flags placed before the command line's, which win.

    List-valued options (--input) given on the command line replace the file's list
    rather than append to it. Unknown keys are errors, not silently ignored.
    """
    parser = FlagTable()
    flags = parser.by_dest()
    unknown = sorted(set(config) - set(flags))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} in the config file; see --help for names.")
    dest_of = {spelling: flag.dest for flag in parser.declared or () for spelling in flag.option_strings}
    given_names = {dest_of.get(arg.split("=", 1)[0]) for arg in given if arg.startswith("--")}
    argv = []
    for key, value in config.items():
        flag = flags[key]
        if flag.action in ("store_true", "store_false"):
            if not isinstance(value, bool):
                raise ConfigError(f"config option {key!r} must be true or false. Received: {value!r}")
            if value == (flag.action == "store_true"):
                argv.append(flag.spelling)
        elif isinstance(value, list):
            if flag.action == "store" and flag.nargs is None:
                raise ConfigError(f"config option {key!r} takes one value. Received: {value!r}")
            if flag.nargs in ("*", "+"):
                argv += [flag.spelling, *map(str, value)]
            elif key not in given_names:  # append-style (--input, --experiments): one flag each
                argv += [f"{flag.spelling}={item}" for item in value]
        elif value is not None:
            argv.append(f"{flag.spelling}={value}")
    return argv


def load_config(path: str) -> dict:
    """Reads a YAML mapping of option name -> value."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        # PyYAML's message spans lines (the mark, a caret); the user gets one.
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(error).split())}") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"config {path} must be a mapping of option: value. Received: {type(config).__name__}"
        )
    return config


def job_parser() -> OptionParser:
    """The parser of `python -m pipeline.run`'s own flags (and its --help)."""
    parser = OptionParser(
        prog="python -m pipeline.run",
        description="Label (and embed) images with VGG16 into Parquet. All standard Beam "
        "pipeline options (--runner, --direct_num_workers, --temp_location, --setup_file, "
        "--s3_endpoint_url, ...) are passed through to Beam.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    VGGOptions._add_argparse_args(parser)
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits argv into this job's options (YAML config applied) and Beam's flags.

    Raises:
        ConfigError: the first bad, unknown or missing option, in one line naming it.
    """
    parser = job_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        argv = [*config_to_argv(load_config(first.config), argv), *argv]
    parsed, beam_args = parser.parse_known_args(argv)
    check_beam_args(beam_args)
    check_flink_job_server(beam_args)
    args = resolve(parsed)
    _warn_about_secret_flags(beam_args)
    return args, beam_args


def check_beam_args(beam_args: Sequence[str]) -> None:
    """Refuses what neither this job nor Beam recognises (Beam itself only logs and drops it).

    A misspelled flag (--embedings) would otherwise run a whole job without what it asked for.

    Raises:
        ConfigError: naming the first unknown argument and the closest known flag, or a
            known flag's bad value.
    """
    parser = FlagTable()
    parsed, unknown = parser.parse_known_args(list(beam_args))
    if not unknown:
        flink_only = [name for name, _, _ in FLINK_JOB_SERVER_OPTIONS if getattr(parsed, name) is not None]
        if flink_only and runner_name(PipelineOptions(list(beam_args))) not in FLINK_RUNNERS:
            raise ConfigError(
                f"--{flink_only[0]} is an option of Beam's Flink job server: it applies with "
                "--runner=FlinkRunner (docs/flink.md)."
            )
        return
    arg = unknown[0]
    if not arg.startswith("--"):
        raise ConfigError(f"unrecognized argument {arg!r}: every option is a --flag (see --help).")
    suggestions = difflib.get_close_matches(arg.split("=", 1)[0], parser.spellings(), n=1)
    hint = f" (did you mean {suggestions[0]}?)" if suggestions else ""
    raise ConfigError(
        f"unrecognized option {arg.split('=', 1)[0]}{hint}: neither this job nor Beam's pipeline "
        "options know it; nothing was run (see --help)."
    )


def check_flink_job_server(beam_args: Sequence[str]) -> None:
    """Makes sure --runner=FlinkRunner has a job server, before anything else runs.

    With --job_endpoint there is one already. Otherwise the launcher starts Beam's Flink job
    server with Java, from --flink_job_server_jar or, without it, from the jar Beam's
    FlinkRunner fetches for the installed Beam and --flink_version (from Maven Central, into
    Beam's jar cache). That fetch is done here, as Beam does it and into the same cache, so
    Beam then finds the jar there; what Beam would fail on later (no Java, no network, a
    repository that does not serve the jar) is one line now, not a traceback after the
    launcher's checks (docs/flink.md).

    Raises:
        ConfigError: what is missing, and how to get a job server.
    """
    options = PipelineOptions(list(beam_args))
    if runner_name(options) not in ("flink", "flinkrunner") or options.view_as(PortableOptions).job_endpoint:
        return
    flink = options.view_as(FlinkRunnerOptions)
    jar = flink.flink_job_server_jar
    endpoint = "or pass --job_endpoint=HOST:PORT of a job server you run (docs/flink.md)"
    how = f"scripts/flink_setup.sh builds one and prints its path for --flink_job_server_jar=JAR, {endpoint}"
    if jar and "://" not in jar and not os.path.isfile(jar):
        raise ConfigError(f"--flink_job_server_jar {jar!r} is not a file; {how}.")
    java = options.view_as(JobServerOptions).job_server_java_launcher
    if not flink.flink_submit_uber_jar and not shutil.which(java):
        raise ConfigError(
            f"--runner=FlinkRunner starts Beam's Flink job server with {java!r}, which is not installed "
            "here: install Java 17 for it (whether Beam fetches the jar or scripts/flink_setup.sh builds "
            f"one for --flink_job_server_jar=JAR), {endpoint}."
        )
    if jar and "://" not in jar:
        return
    local = flink_job_server_jar(options, how)
    log.info("Beam's Flink job server: %s, from %s", local, FlinkJarJobServer(options).path_to_jar())


def flink_job_server_jar(options: PipelineOptions, how: str = "pass --flink_job_server_jar=JAR") -> str:
    """The local path of the Flink job-server jar that Beam's FlinkRunner uses (fetched into Beam's cache).

    Raises:
        ConfigError: it cannot be fetched (`how`: what the user can do instead).
    """
    url = FlinkJarJobServer(options).path_to_jar()
    try:
        with _network_timeout(JAR_FETCH_TIMEOUT_S), _quiet(subprocess_server.__name__):
            return JavaJarJobServer.local_jar(url, options.view_as(JobServerOptions).jar_cache_dir)
    except (RuntimeError, OSError, ValueError) as error:
        raise ConfigError(
            f"Beam's FlinkRunner could not fetch its Flink job server jar ({' '.join(str(error).split())}); "
            f"{how}."
        ) from error


# How long the launcher waits for a Flink cluster to report a job it cancelled as stopped.
FLINK_CANCEL_S = 60
FLINK_ENDED = ("CANCELED", "FINISHED", "FAILED")
# A job named by the user is the launcher's if the cluster started it at most this long
# before the launcher submitted it (the two clocks may differ).
FLINK_CLOCK_SLACK_S = 60


def flink_job_name(options: PipelineOptions, token: str) -> str:
    """The name the Flink job will have: --job_name, or, when none is given, `vgg16-watch-TOKEN`, set here.

    Beam's Flink runner names the cluster's job after the pipeline's job name (Java's
    default is made up on the job server); a name of the launcher's own lets it find the job.
    """
    cloud = options.view_as(GoogleCloudOptions)
    if not cloud.job_name:
        cloud.job_name = f"vgg16-watch-{token}"
    return cloud.job_name


def cancel_flink_job(
    options: PipelineOptions, name: str, since_s: float, timeout_s: float = FLINK_CANCEL_S
) -> None:
    """Cancels, by --flink_master's REST API, the Flink jobs named `name` since `since_s`; waits for them.

    Beam's job server, asked to cancel, ends its own invocation but leaves the job running
    on a Flink cluster. `since_s` (seconds since the epoch) is when the launcher submitted
    the job, less FLINK_CLOCK_SLACK_S: a job of the same name that an earlier launch left
    is not this one. Nothing to do without a cluster address ([auto], [local]: the job
    runs inside the job server) or when the job has ended already. A cluster that does not
    answer is logged, not raised: the launcher is stopping anyway.
    """
    master = options.view_as(FlinkRunnerOptions).flink_master or ""
    if not master or master.startswith("["):
        return
    base = (master if "://" in master else f"http://{master}").rstrip("/")
    earliest_ms = (since_s - FLINK_CLOCK_SLACK_S) * 1000
    try:
        jobs = [
            job
            for job in _flink_rest(f"{base}/jobs/overview")["jobs"]
            if job["name"] == name and job["start-time"] >= earliest_ms
        ]
        for job in jobs:
            if job["state"] not in FLINK_ENDED:
                _flink_rest(f"{base}/jobs/{job['jid']}?mode=cancel", method="PATCH")
        deadline = time.monotonic() + timeout_s
        for job in jobs:
            while _flink_rest(f"{base}/jobs/{job['jid']}")["state"] not in FLINK_ENDED:
                if time.monotonic() > deadline:
                    log.warning("Flink job %s did not stop within %g s of its cancel", job["jid"], timeout_s)
                    return
                time.sleep(0.5)
            log.info("Flink job %s (%s) stopped", job["jid"], name)
    except (OSError, ValueError, KeyError) as error:
        log.warning("could not cancel the Flink job %s at %s: %s", name, base, error)


def _flink_rest(url: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
        body = response.read()
    return json.loads(body) if body.strip() else {}


EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"


@contextlib.contextmanager
def flink_expansion_service(options: PipelineOptions):
    """Within: Beam's Java expansion service from the Flink job-server jar, on a free local port: its address.

    A --watch job on Flink ticks with Java's GenerateSequence (pipeline.job.watch.JavaTicks),
    which this service expands while the pipeline is built. It runs with Beam's
    use_deprecated_read experiment, so the source stays a Read that the Flink runner reads
    itself: as a splittable DoFn, which is how Beam would run it otherwise, its state on
    the portable Flink runner grows with every poll (apache/beam#27648).
    """
    from apache_beam.portability.api import beam_expansion_api_pb2_grpc

    jar = flink_job_server_jar(options)
    java = options.view_as(JobServerOptions).job_server_java_launcher
    (port,) = subprocess_server.pick_port(None)
    command = [java, "-cp", jar, EXPANSION_SERVICE_MAIN, str(port), "--experiments=use_deprecated_read"]
    stub = beam_expansion_api_pb2_grpc.ExpansionServiceStub
    server = subprocess_server.SubprocessServer(stub, command, port=port)
    with _quiet(subprocess_server.__name__):
        server.start()
    log.info("Java expansion service (GenerateSequence for --watch's polls) on localhost:%d", port)
    try:
        yield f"localhost:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Within: the logger's warnings are not shown (the failure is one ConfigError line instead).

    Beam 2.77 warns in six lines, for each repository it tries, that it downloads from a
    public one; the launcher says in one line where the jar came from once it has it.
    """
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _network_timeout(seconds: float):
    """Within: a network operation that stalls for `seconds` fails instead of hanging.

    Beam's jar download opens its connection without a timeout of its own.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _warn_about_secret_flags(beam_args: Sequence[str]) -> None:
    given = {arg.split("=", 1)[0] for arg in beam_args if arg.startswith("--")}
    for flag in sorted(given & set(SECRET_FLAGS)):
        # Never the value: only that the flag was used.
        log.warning(
            "%s was given on the command line: pipeline options are shown in runner UIs, logs and "
            "the job's display data. Prefer the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the workers' IAM role.",
            flag,
        )


def provenance(args: argparse.Namespace, info: WeightsInfo) -> dict[str, str]:
    """The run's provenance for the output tables' footers (pipeline.contract.provenance)."""
    return contract.provenance(
        weights=args.weights,
        info=info,
        resize=args.resize,
        precision=args.precision,
        top_k=args.top_k,
        version=vgg.__version__,
    )


def s3_options(beam_options) -> dict[str, object]:
    """The job's S3 options (--s3_endpoint_url, ...) that are set, for the commit step's Delta client."""
    return {
        key: value
        for key, value in beam_options.get_all_options(drop_default=True).items()
        if key.startswith("s3_") and value is not None
    }


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Checks the parsed options; returns a copy with --min_batch_size's default filled in.

    Each config checks its own fields as it is made here, so a bad value is refused on the
    launcher before anything runs; what is checked here is the rest: the required --output
    and the rules that span flags no one config holds. `args` itself is not changed.

    Raises:
        ConfigError: the first problem, naming the flag, the value received, what to do.
    """
    InputConfig.from_args(args)
    if not args.output:
        raise ConfigError("no output: pass --output DIRECTORY.")
    model = ModelConfig.from_args(args)
    DecodeConfig.from_args(args)
    watch_only = ("poll_interval_s", "window_s", "settle_s", "window_shards", "watch_pubsub")
    if args.watch:
        config = WatchConfig.from_args(args)
        filled = {
            "poll_interval_s": config.poll_interval_s,
            "window_s": config.window_s,
            "settle_s": config.settle_s,
            "window_shards": config.shards,
            "watch_pubsub": config.pubsub,
        }
        return argparse.Namespace(**{**vars(args), **filled, "min_batch_size": model.min_batch_size})
    given = [name for name in watch_only if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"--{given[0]} {getattr(args, given[0])} only applies with --watch.")
    if args.retry_errors and not args.resume:
        raise ConfigError(
            "--retry_errors only applies with --resume (a run without --resume relabels everything)."
        )
    return argparse.Namespace(**{**vars(args), "min_batch_size": model.min_batch_size})


def pipeline_options(
    args: argparse.Namespace, beam_args: Sequence[str], *, save_main_session: bool = False
) -> PipelineOptions:
    """Beam's options for the run: Beam's flags, plus the job's own values.

    The job's values ride along (VGGOptions is one of Beam's option classes) so that what a
    runner shows of the job, e.g. Dataflow's pipeline options panel, is what it runs with,
    not the defaults.
    """
    values = {key: value for key, value in vars(args).items() if value is not None}
    options = PipelineOptions(list(beam_args), save_main_session=save_main_session, **values)
    if "job_server_timeout" not in options.get_all_options(drop_default=True):
        # A portable runner (Flink, Prism) is followed through two gRPC streams whose deadline
        # is --job_server_timeout (Beam's default: 300 s): past it the launcher failed while
        # the job ran on (on Prism, the job went with it). A job takes as long as it takes,
        # and a --watch job never ends; check_job_endpoint keeps a dead endpoint from waiting.
        options.view_as(PortableOptions).job_server_timeout = JOB_STREAM_DEADLINE_S
    return options


def check_job_endpoint(beam_options: PipelineOptions) -> None:
    """An explicit --job_endpoint must answer, before anything is submitted.

    Beam waits for a job endpoint as long as --job_server_timeout, which pipeline_options
    makes as long as any job; so the launcher tries a connection itself, for at most
    JOB_ENDPOINT_CONNECT_S.

    Raises:
        ConfigError: naming the endpoint and why it does not answer.
    """
    endpoint = beam_options.view_as(PortableOptions).job_endpoint
    if not endpoint or endpoint in ("embed", "docker"):  # Beam's own in-process or container servers
        return
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), JOB_ENDPOINT_CONNECT_S):
            pass
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--job_endpoint {endpoint!r} does not answer ({error}); start the job server first, or leave "
            "--job_endpoint out for the runner to start its own (docs/flink.md)"
        ) from error
