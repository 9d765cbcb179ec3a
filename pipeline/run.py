"""Entry point: argv -> options -> launcher checks -> the Beam pipeline -> a summary.

python -m pipeline.run --input 'photos/**/*.jpg' --output out/ --weights vgg16_weights.npz
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402

from pipeline import ConfigError, contract, logs, storage  # noqa: E402
from pipeline import table as delta  # noqa: E402
from pipeline.job import failpoints, options, resume, write  # noqa: E402
from pipeline.job.decode import DecodeConfig  # noqa: E402
from pipeline.job.label import LabelImages  # noqa: E402
from pipeline.job.model_handler import ModelConfig, VGG16ModelHandler  # noqa: E402
from pipeline.job.read import shards  # noqa: E402
from pipeline.job.summary import JobFailed, summarize  # noqa: E402
from pipeline.storage import stage_weights  # noqa: E402
from vgg.weights import WeightsError, WeightsInfo, describe_weights  # noqa: E402

log = logging.getLogger("pipeline.run")
# A user's mistake, found on the launcher: one `error:` line and exit status 2.
USAGE_ERRORS = (ConfigError, WeightsError, storage.InputError, write.OutputError, delta.TableError)


def check_launch(args) -> WeightsInfo:
    """Everything a user can get wrong, checked before anything is submitted or written."""
    info = describe_weights(stage_weights(args.weights), sha256=args.weights_sha256)
    shards.check_inputs(shards.InputConfig.from_args(args))
    write.check_output_writable(args.output)
    return info


def build_pipeline(
    pipeline, args, info: WeightsInfo, plan=None, *, handler=None, reader=None, decode=None, s3=None
):
    """Adds the whole job to `pipeline` (used by run() and by tests with TestPipeline).

    `plan` is what resume.prepare decided (default: a fresh output, run 1). `handler`, `reader`
    and `decode` replace the real model handler, loose-file reader and image decoder (tests);
    `s3` holds the job's S3 options, for the commit step's own client.
    """
    plan = plan or resume.Plan(args.output)
    source = shards.InputConfig.from_args(args)
    read = pipeline | "Inputs" >> shards.ReadInputs(source, reader=reader, plan=plan)
    config = DecodeConfig.from_args(args)
    if decode is not None:
        config = dataclasses.replace(config, decode=decode)
    handler = handler or VGG16ModelHandler(ModelConfig.from_args(args, sha256=info.sha256))
    labelled = read["images"] | "Label" >> LabelImages(
        handler, config, top_k=args.top_k, embeddings=args.embeddings
    )
    errors = (read[contract.ERRORS], labelled[contract.ERRORS]) | "AllErrors" >> beam.Flatten()
    tables = {contract.PREDICTIONS: labelled[contract.PREDICTIONS], contract.ERRORS: errors}
    provenance = options.provenance(args, info)
    written = tables | "Write" >> write.WriteOutputs(
        args.output, provenance=provenance, embeddings=args.embeddings, run=plan.run, token=plan.token
    )
    commit = plan.commit(write.schemas(provenance, embeddings=args.embeddings), provenance)
    written | "Commit" >> write.CommitRun(commit, s3)


def run(argv=None, save_main_session=False, test_pipeline=None, *, handler=None, reader=None, decode=None):
    """Runs the job; returns the Beam result. Raises one of USAGE_ERRORS before anything runs.

    handler, reader and decode replace the real model handler, reader and decoder (tests).
    """
    args, beam_args = options.parse_args(sys.argv[1:] if argv is None else argv)
    beam_options = options.pipeline_options(args, beam_args, save_main_session=save_main_session)
    # The launcher's own checks (input listing, output probe, --resume) go through the
    # same filesystems as the job, so they need its options (e.g. --s3_endpoint_url) too.
    FileSystems.set_options(beam_options)
    info = check_launch(args)
    if info.untrained:
        # Once per run, on the launcher, before anything is submitted.
        log.warning(contract.UNTRAINED_WARNING)
    s3 = options.s3_options(beam_options)
    plan = resume.prepare(
        args.output,
        resume=args.resume,
        retry_errors=args.retry_errors,
        provenance=options.provenance(args, info),
        embeddings=args.embeddings,
        options=delta.storage_options(args.output, s3),
    )
    pipeline = test_pipeline or beam.Pipeline(options=beam_options)
    build_pipeline(pipeline, args, info, plan, handler=handler, reader=reader, decode=decode, s3=s3)
    failpoints.hit("launched")  # the output completed and tidied; nothing of this run written
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - start
    print(summarize(result, wall, args.max_error_fraction), flush=True)
    return result


def main(argv: list[str] | None = None, *, handler=None) -> int:
    """The command line: 0 done, 1 over the error budget, 2 a user's mistake (one `error:` line).

    handler replaces the real model handler (tests: tests/pipeline/crash_job.py).
    """
    logs.configure(logging.INFO)  # the job's own progress; Beam's and TensorFlow's from WARNING up
    try:
        run(argv, handler=handler)
    except USAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JobFailed as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now; skip the interpreter's teardown of
    # TensorFlow and the model once the streams are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The exit hooks still run: Beam stops the job server it started (FlinkRunner's Java
    # process) in one, and without it that JVM outlives every run.
    atexit._run_exitfuncs()
    os._exit(code)
