"""Entry point: argv -> options -> launcher checks -> the Beam pipeline -> a summary.

python -m pipeline.run --input 'photos/**/*.jpg' --output out/ --weights vgg16_weights.npz
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io import fileio  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.io.parquetio import WriteToParquet  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

import vgg  # noqa: E402
from pipeline import io, resume  # noqa: E402
from pipeline.model_handler import VGG16ModelHandler  # noqa: E402
from pipeline.options import ConfigError, parse_args  # noqa: E402
from pipeline.schema import STAGES, errors_schema, predictions_schema  # noqa: E402
from pipeline.transforms import NAMESPACE, LabelImages  # noqa: E402
from vgg.preprocess import decode_image  # noqa: E402
from vgg.weights import WeightsError, WeightsInfo, describe_weights  # noqa: E402

log = logging.getLogger("pipeline.run")

# Beam's S3 flags that carry credentials; the environment or an IAM role is the place for them.
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")
UNTRAINED_WARNING = (
    "UNTRAINED weights (synthesized random numbers): every label this job writes is meaningless."
)


class JobFailed(RuntimeError):
    """The job ran but broke a promise (e.g. its error budget); outputs are written."""


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def check_launch(args) -> WeightsInfo:
    """Everything a user can get wrong, checked before anything is submitted or written."""
    info = describe_weights(io.stage_weights(args.weights), sha256=args.weights_sha256)
    if args.input:
        io.check_patterns([_absolute(p) for p in args.input])
    if args.input_list:
        io.read_input_list(args.input_list)
    io.check_output_writable(args.output)
    return info


def provenance(args, info: WeightsInfo) -> dict[str, str]:
    return {
        "weights_name": os.path.basename(args.weights) if args.weights != "imagenet" else info.name,
        "weights_sha256": info.sha256,
        "weights_untrained": str(info.untrained).lower(),
        "resize": args.resize,
        "precision": args.precision,
        "top_k": str(args.top_k),
        "package_version": vgg.__version__,
        "image_id": "first 32 hex digits of sha256(uri)",
    }


def build_pipeline(
    pipeline: beam.Pipeline,
    args,
    info: WeightsInfo,
    *,
    previous: resume.Previous | None = None,
    handler: VGG16ModelHandler | None = None,
    reader=None,
    decode=None,
) -> None:
    """Adds the whole job to `pipeline` (used by run() and by tests with TestPipeline).

    With `previous` (a --resume), only inputs not in those shards are labelled and this
    attempt's shards get their own names. `handler`, `reader` and `decode` replace the
    real model handler, file reader and image decoder (tests pass fakes).
    """
    sources = []
    if args.input:
        sources.append(
            pipeline
            | "Patterns" >> beam.Create([_absolute(p) for p in args.input])
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
        )
    if args.input_list:
        sources.append(
            pipeline
            | "ReadList" >> beam.io.ReadFromText(args.input_list)
            | "ListedURIs" >> beam.FlatMap(_listed_uri)
        )
    uris = tuple(sources) | "AllInputs" >> beam.Flatten() | "Dedupe" >> beam.Distinct()
    carried = []
    attempt = 0
    if previous is not None and previous.paths:
        plan = uris | "SkipDone" >> resume.SkipDone(previous, retry_errors=args.retry_errors)
        uris, carried, attempt = plan["todo"], [plan["carried"]], previous.next_attempt
    if handler is None:
        handler = VGG16ModelHandler(
            args.weights,
            sha256=info.sha256,
            precision=args.precision,
            jit=args.jit,
            min_batch_size=args.min_batch_size,
            max_batch_size=args.batch_size,
            large_model=args.share_model,
        )
    out = uris | "Label" >> LabelImages(
        handler,
        resize=args.resize,
        top_k=args.top_k,
        embeddings=args.embeddings,
        reader=reader or functools.partial(io.read_bytes, max_bytes=args.max_input_bytes),
        decode_isolation=args.decode_isolation,
        decode_timeout_s=args.decode_timeout_s or None,
        decode=decode or decode_image,
        decode_threads=args.decode_threads,
        decode_prefetch=2 * args.batch_size,
    )
    errors = out["errors"]
    if carried:
        errors = (errors, *carried) | "WithCarriedErrors" >> beam.Flatten()
    metadata = provenance(args, info)
    out["predictions"] | "WritePredictions" >> WriteToParquet(
        resume.shard_prefix(args.output, io.PREDICTIONS_PREFIX, attempt),
        predictions_schema(embeddings=args.embeddings, metadata=metadata),
        codec="zstd",
        file_name_suffix=io.SUFFIX,
        shard_name_template=io.SHARD_TEMPLATE,
        record_batch_size=256,
    )
    errors | "WriteErrors" >> WriteToParquet(
        resume.shard_prefix(args.output, io.ERRORS_PREFIX, attempt),
        errors_schema(metadata=metadata),
        codec="zstd",
        file_name_suffix=io.SUFFIX,
        shard_name_template=io.SHARD_TEMPLATE,
    )


def _listed_uri(line: str):
    uri = line.strip()
    if uri and not uri.startswith("#"):
        yield _absolute(uri)


def counters(result) -> dict[str, int]:
    found = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        found[counter.key.metric.name] = found.get(counter.key.metric.name, 0) + (value or 0)
    return found


def summarize(result, wall_s: float, max_error_fraction: float) -> str:
    """The run's one-line summary; raises JobFailed when the error budget is spent."""
    found = counters(result)
    labelled = found.get("images_labelled", 0)
    failed = {stage: found.get(f"failed_{stage}", 0) for stage in STAGES}
    total = labelled + sum(failed.values())
    by_stage = ", ".join(f"{stage} {n}" for stage, n in failed.items())
    line = f"summary: {total} inputs, {labelled} labelled, {sum(failed.values())} failed ({by_stage})"
    if found.get("inputs_skipped") or found.get("errors_retried"):
        line += (
            f", {found.get('inputs_skipped', 0)} skipped as already in --output, "
            f"{found.get('errors_retried', 0)} earlier errors retried"
        )
    line += f"; wall {wall_s:.1f} s, {labelled / wall_s if wall_s else 0:.2f} images/s"
    if found.get("read_retries") or found.get("decoder_crashes"):
        line += (
            f"; {found.get('read_retries', 0)} read retries, "
            f"{found.get('decoder_crashes', 0)} decoder crashes/timeouts contained"
        )
    if total and sum(failed.values()) / total > max_error_fraction:
        raise JobFailed(
            f"{line}\nerror: {sum(failed.values())} of {total} inputs failed "
            f"({sum(failed.values()) / total:.1%}), more than --max_error_fraction={max_error_fraction}. "
            "Every row is written; see the errors-*.parquet files for what failed and why, or "
            "raise --max_error_fraction if that many bad inputs are expected."
        )
    return line


def _warn_about_secret_flags(beam_args: list[str]) -> None:
    given = {arg.split("=", 1)[0] for arg in beam_args if arg.startswith("--")}
    for flag in sorted(given & set(SECRET_FLAGS)):
        # Never the value: only that the flag was used.
        log.warning(
            "%s was given on the command line: pipeline options are shown in runner UIs, logs and "
            "the job's display data. Prefer the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the workers' IAM role.",
            flag,
        )


def run(
    argv: list[str] | None = None,
    save_main_session: bool = False,
    test_pipeline=None,
    *,
    handler: VGG16ModelHandler | None = None,
    reader=None,
    decode=None,
):
    """Runs the job; returns the Beam result. Raises ConfigError/WeightsError/InputError early.

    handler, reader and decode replace the real model handler, reader and decoder (tests).
    """
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    _warn_about_secret_flags(beam_args)
    options = PipelineOptions(beam_args, save_main_session=save_main_session)
    # The launcher's own checks (input listing, output probe, --resume) go through the
    # same filesystems as the job, so they need its options (e.g. --s3_endpoint_url) too.
    FileSystems.set_options(options)
    info = check_launch(args)
    if info.untrained:
        log.warning(UNTRAINED_WARNING)
    previous = resume.find_previous(args.output)
    if args.resume:
        resume.check_compatible(previous, provenance(args, info), embeddings=args.embeddings)
        if previous.paths:
            log.info(
                "resuming: %d predictions and %d errors shards already in %s; new shards are attempt r%03d",
                len(previous.predictions),
                len(previous.errors),
                args.output,
                previous.next_attempt,
            )
    else:
        io.remove_outputs(list(previous.paths))
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(
        pipeline,
        args,
        info,
        previous=previous if args.resume else None,
        handler=handler,
        reader=reader,
        decode=decode,
    )
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - start
    io.remove_empty_temp_dirs(args.output)
    if args.resume and args.retry_errors and previous.errors:
        # Their rows are in this attempt's errors shards now (carried or retried).
        log.info("replacing %d earlier errors shard(s)", len(previous.errors))
        FileSystems.delete(list(previous.errors))
    print(summarize(result, wall, args.max_error_fraction), flush=True)
    if info.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        run(argv)
    except (ConfigError, WeightsError, io.InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobFailed as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now; skip the interpreter's teardown of
    # TensorFlow and the model (about 1.5 s of a local run) once the streams are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
