"""Entry point: argv -> options -> launcher checks -> the Beam pipeline -> a summary.

python -m pipeline.run --input 'photos/**/*.jpg' --output out/ --weights vgg16_weights.npz
"""

from __future__ import annotations

import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io import fileio  # noqa: E402
from apache_beam.io.parquetio import WriteToParquet  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

import vgg  # noqa: E402
from pipeline import io  # noqa: E402
from pipeline.model_handler import VGG16ModelHandler  # noqa: E402
from pipeline.options import ConfigError, parse_args  # noqa: E402
from pipeline.schema import STAGES, errors_schema, predictions_schema  # noqa: E402
from pipeline.transforms import NAMESPACE, LabelImages  # noqa: E402
from vgg.weights import WeightsError, WeightsInfo, describe_weights  # noqa: E402

log = logging.getLogger("pipeline.run")

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


def build_pipeline(pipeline: beam.Pipeline, args, info: WeightsInfo) -> None:
    """Adds the whole job to `pipeline` (used by run() and by tests with TestPipeline)."""
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
        handler, resize=args.resize, top_k=args.top_k, embeddings=args.embeddings
    )
    metadata = provenance(args, info)
    out["predictions"] | "WritePredictions" >> WriteToParquet(
        io.output_prefix(args.output, io.PREDICTIONS_PREFIX),
        predictions_schema(embeddings=args.embeddings, metadata=metadata),
        codec="zstd",
        file_name_suffix=io.SUFFIX,
        shard_name_template=io.SHARD_TEMPLATE,
        record_batch_size=256,
    )
    out["errors"] | "WriteErrors" >> WriteToParquet(
        io.output_prefix(args.output, io.ERRORS_PREFIX),
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
    found = counters(result)
    labelled = found.get("images_labelled", 0)
    failed = {stage: found.get(f"failed_{stage}", 0) for stage in STAGES}
    total = labelled + sum(failed.values())
    by_stage = ", ".join(f"{stage} {n}" for stage, n in failed.items())
    line = (
        f"summary: {total} inputs, {labelled} labelled, {sum(failed.values())} failed ({by_stage}); "
        f"wall {wall_s:.1f} s, {labelled / wall_s if wall_s else 0:.2f} images/s"
    )
    if total and sum(failed.values()) / total > max_error_fraction:
        raise JobFailed(
            f"{line}\nerror: {sum(failed.values())} of {total} inputs failed, more than "
            f"--max_error_fraction={max_error_fraction}; see the errors-*.parquet files."
        )
    return line


def run(argv: list[str] | None = None, save_main_session: bool = False, test_pipeline=None):
    """Runs the job; returns the Beam result. Raises ConfigError/WeightsError/InputError early."""
    args, beam_args = parse_args(sys.argv[1:] if argv is None else argv)
    info = check_launch(args)
    if info.untrained:
        log.warning(UNTRAINED_WARNING)
    io.remove_outputs(io.existing_outputs(args.output))
    options = PipelineOptions(beam_args, save_main_session=save_main_session)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, args, info)
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - start
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
    sys.exit(main())
