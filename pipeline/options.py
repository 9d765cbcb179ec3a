"""The job's own options (a PipelineOptions subclass) and YAML run configurations under configs/."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections.abc import Sequence

import yaml
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    _BeamArgumentParser,
)

import vgg
from pipeline import outputs
from pipeline.inputs import MAX_INPUT_BYTES
from pipeline.model_handler import ModelConfig
from pipeline.shards import FORMATS, INPUT_FORMATS, InputConfig
from pipeline.transforms import DECODE_TIMEOUT_S, ISOLATION_MODES, DecodeConfig
from vgg.architecture import PRECISIONS
from vgg.preprocess import RESIZE_MODES
from vgg.weights import WeightsInfo

log = logging.getLogger(__name__)

# Beam's S3 flags that carry credentials; the environment or an IAM role is the place for them.
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")


class ConfigError(ValueError):
    """A configuration file or flag the job cannot run with; the message says which and why."""


class VGGOptions(PipelineOptions):
    """Options of `python -m pipeline.run`; every standard Beam option passes through untouched."""

    @classmethod
    def _add_argparse_args(cls, parser):
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
        group.add_argument("--top_k", type=int, default=5, help="labels per image")
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
            "--max_error_fraction",
            type=float,
            default=1.0,
            help="exit with status 1 (after writing every row) when more than this fraction of the "
            "inputs failed; 1.0 never fails, since bad files are expected and each is an errors row "
            "(configs/dataflow_gpu.yaml and flink.yaml use 0.01)",
        )
        group.add_argument(
            "--resume",
            action="store_true",
            default=False,
            help="keep what --output already holds and label only inputs whose image_id is in none "
            "of its predictions-*/errors-* shards (previous failures stay failures unless "
            "--retry_errors); new shards get their own names (predictions-r001-...), never "
            "overwriting old ones. Without --resume, a run replaces the output's shards.",
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
            "--max_input_bytes",
            type=int,
            default=MAX_INPUT_BYTES,
            help="larger input files become errors rows (read, too_large) without being read to the end",
        )
        group.add_argument("--config", default=None, help="YAML file of these and Beam's options")


def _all_option_classes(cls=PipelineOptions):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_option_classes(sub)


def known_option_names() -> dict[str, argparse.Action]:
    """Every option name Beam and this job know, with its argparse action."""
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    for cls in _all_option_classes():
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        # Several flags can share a dest (--save_main_session / --no_save_main_session):
        # the one spelled like the key is what a config's `key: value` means.
        if action.dest not in actions or f"--{action.dest}" in action.option_strings:
            actions[action.dest] = action
    return actions


def config_to_argv(config: dict, given: Sequence[str]) -> list[str]:
    """Turns a config mapping into flags placed before the command line's, which win.

    List-valued options (--input) given on the command line replace the file's list
    rather than append to it. Unknown keys are errors, not silently ignored.
    """
    actions = known_option_names()
    unknown = sorted(set(config) - set(actions))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} in the config file; see --help for names.")
    by_flag = {flag: action.dest for action in actions.values() for flag in action.option_strings}
    given_names = {by_flag.get(arg.split("=", 1)[0]) for arg in given if arg.startswith("--")}
    argv = []
    for key, value in config.items():
        action = actions[key]
        flag = max(action.option_strings, key=len) if action.option_strings else f"--{key}"
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            if not isinstance(value, bool):
                raise ConfigError(f"config option {key!r} must be true or false. Received: {value!r}")
            if value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
        elif isinstance(value, list):
            if isinstance(action, argparse._StoreAction) and action.nargs is None:
                raise ConfigError(f"config option {key!r} takes one value. Received: {value!r}")
            if action.nargs in ("*", "+"):
                argv += [flag, *map(str, value)]
            elif key not in given_names:  # append-style (--input, --experiments): one flag each
                argv += [f"{flag}={item}" for item in value]
        elif value is not None:
            argv.append(f"{flag}={value}")
    return argv


def load_config(path: str) -> dict:
    """Reads a YAML mapping of option name -> value."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"config {path} must be a mapping of option: value. Received: {type(config).__name__}"
        )
    return config


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits argv into this job's options (YAML config applied) and Beam's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Label (and embed) images with VGG16 into Parquet. All standard Beam "
        "pipeline options (--runner, --direct_num_workers, --temp_location, --setup_file, "
        "--s3_endpoint_url, ...) are passed through to Beam.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    VGGOptions._add_argparse_args(parser)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        argv = [*config_to_argv(load_config(first.config), argv), *argv]
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(beam_args)
    check_flink_job_server(beam_args)
    validate(args)
    _warn_about_secret_flags(beam_args)
    return args, beam_args


def check_beam_args(beam_args: Sequence[str]) -> None:
    """Refuses what neither this job nor Beam recognises (Beam itself only logs and drops it).

    A misspelled flag (--embedings) would otherwise run a whole job without what it asked for.

    Raises:
        ConfigError: naming the first unknown argument and the closest known flag.
    """
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # as PipelineOptions.get_all_options does
    _, unknown = parser.parse_known_args(list(beam_args))
    if not unknown:
        return
    arg = unknown[0]
    if not arg.startswith("--"):
        raise ConfigError(f"unrecognized argument {arg!r}: every option is a --flag (see --help).")
    known = [flag for action in parser._actions for flag in action.option_strings]
    suggestions = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
    hint = f" (did you mean {suggestions[0]}?)" if suggestions else ""
    raise ConfigError(
        f"unrecognized option {arg.split('=', 1)[0]}{hint}: neither this job nor Beam's pipeline "
        "options know it; nothing was run (see --help)."
    )


def check_flink_job_server(beam_args: Sequence[str]) -> None:
    """Refuses --runner=FlinkRunner with neither a job-server jar to start nor a job server to use.

    Without either, Beam's FlinkRunner downloads Beam's own job-server jar from Maven
    Central, which does not serve it to this project's machines: an HTTP 404 and a
    traceback after the launcher's checks (docs/flink.md).

    Raises:
        ConfigError: saying how to get the jar.
    """
    options = PipelineOptions(list(beam_args))
    runner = (options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()
    if runner not in ("flink", "flinkrunner") or options.view_as(PortableOptions).job_endpoint:
        return
    jar = options.view_as(FlinkRunnerOptions).flink_job_server_jar
    how = "scripts/flink_setup.sh builds the jar and prints its path (docs/flink.md)"
    if not jar:
        raise ConfigError(
            "--runner=FlinkRunner needs --flink_job_server_jar=JAR, or --job_endpoint=HOST:PORT of a "
            "job server you run (Beam would fetch its own jar from Maven Central, which does not "
            f"serve it to this project's machines); {how}."
        )
    if "://" not in jar and not os.path.isfile(jar):
        raise ConfigError(f"--flink_job_server_jar {jar!r} is not a file; {how}.")


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


def model_config(args: argparse.Namespace, *, sha256: str | None) -> ModelConfig:
    """The model a worker loads, from the parsed options (sha256: the launcher's digest of the weights)."""
    return ModelConfig(
        weights=args.weights,
        sha256=sha256,
        precision=args.precision,
        jit=args.jit,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.batch_size,
        share_model=args.share_model,
    )


def provenance(args: argparse.Namespace, info: WeightsInfo) -> dict[str, str]:
    """The run's provenance for the output tables' footers (pipeline.outputs.provenance)."""
    return outputs.provenance(
        weights=args.weights,
        info=info,
        resize=args.resize,
        precision=args.precision,
        top_k=args.top_k,
        version=vgg.__version__,
    )


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    """How workers decode, from the parsed options; they decode up to two batches ahead of the model."""
    return DecodeConfig(
        resize=args.resize,
        isolation=args.decode_isolation,
        timeout_s=args.decode_timeout_s or None,
        threads=args.decode_threads,
        prefetch=2 * args.batch_size,
    )


def input_config(args: argparse.Namespace) -> InputConfig:
    """Where the inputs are and how the job reads them, from the parsed options."""
    return InputConfig(
        patterns=tuple(args.input or ()),
        input_list=args.input_list,
        format=args.input_format,
        image_field=args.image_field,
        key_field=args.key_field,
        max_bytes=args.max_input_bytes,
    )


def validate(args: argparse.Namespace) -> None:
    if not args.input and not args.input_list:
        raise ConfigError("no input: pass --input PATTERN (repeatable) and/or --input_list FILE.")
    if args.input_format not in FORMATS and (args.image_field or args.key_field):
        flag = "--image_field" if args.image_field else "--key_field"
        raise ConfigError(
            f"{flag} names a part of a shard; it needs a shard format (--input_format "
            f"{'|'.join(FORMATS)}). Received: --input_format {args.input_format}"
        )
    if args.input_format == "webdataset" and args.key_field:
        raise ConfigError(
            "--key_field applies to tfrecord and parquet shards; a webdataset sample's key is its "
            f"member names' (docs/inputs.md). Received: --key_field {args.key_field}"
        )
    if not args.output:
        raise ConfigError("no output: pass --output DIRECTORY.")
    if not args.weights:
        raise ConfigError("no weights: pass --weights FILE (npz or Keras h5) or --weights imagenet.")
    if not 1 <= args.top_k <= 1000:
        raise ConfigError(f"--top_k must be between 1 and 1000. Received: {args.top_k}")
    if args.min_batch_size is None:
        args.min_batch_size = args.batch_size
    if not 1 <= args.min_batch_size <= args.batch_size:
        raise ConfigError(
            "--min_batch_size must be between 1 and --batch_size. "
            f"Received: min_batch_size={args.min_batch_size}, batch_size={args.batch_size}"
        )
    if not 0.0 <= args.max_error_fraction <= 1.0:
        raise ConfigError(f"--max_error_fraction must be in [0, 1]. Received: {args.max_error_fraction}")
    if args.retry_errors and not args.resume:
        raise ConfigError(
            "--retry_errors only applies with --resume (a run without --resume relabels everything)."
        )
    if args.decode_threads < 1:
        raise ConfigError(f"--decode_threads must be at least 1. Received: {args.decode_threads}")
    if args.decode_timeout_s < 0:
        raise ConfigError(f"--decode_timeout_s must be >= 0 (0: no limit). Received: {args.decode_timeout_s}")
    if args.max_input_bytes < 1:
        raise ConfigError(f"--max_input_bytes must be positive. Received: {args.max_input_bytes}")


def pipeline_options(
    args: argparse.Namespace, beam_args: Sequence[str], *, save_main_session: bool = False
) -> PipelineOptions:
    """Beam's options for the run: Beam's flags, plus the job's own values.

    The job's values ride along (VGGOptions is one of Beam's option classes) so that what a
    runner shows of the job, e.g. Dataflow's pipeline options panel, is what it runs with,
    not the defaults.
    """
    values = {key: value for key, value in vars(args).items() if value is not None}
    return PipelineOptions(list(beam_args), save_main_session=save_main_session, **values)
