"""Entry point: argv -> options -> launcher checks -> the Beam pipeline -> a summary.

python -m pipeline.run --input 'photos/**/*.jpg' --output out/ --weights vgg16_weights.npz
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import StandardOptions  # noqa: E402
from apache_beam.runners.runner import PipelineState  # noqa: E402

from pipeline import ConfigError, contract, logs, storage  # noqa: E402
from pipeline import table as delta  # noqa: E402
from pipeline.job import failpoints, options, resume, summary, watch, write  # noqa: E402
from pipeline.job.decode import DecodeConfig  # noqa: E402
from pipeline.job.label import LabelImages  # noqa: E402
from pipeline.job.model_handler import ModelConfig, VGG16ModelHandler  # noqa: E402
from pipeline.job.read import files, shards  # noqa: E402
from pipeline.job.summary import JobFailed, summarize  # noqa: E402
from pipeline.storage import stage_weights  # noqa: E402
from vgg.weights import WeightsError, WeightsInfo, describe_weights  # noqa: E402

log = logging.getLogger("pipeline.run")
# A user's mistake, found on the launcher: one `error:` line and exit status 2.
USAGE_ERRORS = (ConfigError, WeightsError, storage.InputError, write.OutputError, delta.TableError)


def check_launch(args) -> WeightsInfo:
    """Everything a user can get wrong, checked before anything is submitted or written."""
    info = describe_weights(stage_weights(args.weights), sha256=args.weights_sha256)
    if args.watch:  # the files are still to come: the patterns need only be listable
        files.check_patterns([files.absolute(pattern) for pattern in args.input], allow_empty=True)
    else:
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
    tables = label(read, args, info, handler=handler, decode=decode)
    provenance = options.provenance(args, info)
    written = tables | "Write" >> write.WriteOutputs(
        args.output, provenance=provenance, embeddings=args.embeddings, run=plan.run, token=plan.token
    )
    commit = plan.commit(write.schemas(provenance, embeddings=args.embeddings), provenance)
    written | "Commit" >> write.CommitRun(commit, s3)


def label(read, args, info: WeightsInfo, *, handler=None, decode=None) -> dict:
    """{"images", "errors"} as read -> {table: rows}: the images labelled, every errors row together.

    `handler` and `decode` replace the real model handler and image decoder (tests).
    """
    config = DecodeConfig.from_args(args)
    if decode is not None:
        config = dataclasses.replace(config, decode=decode)
    handler = handler or VGG16ModelHandler(ModelConfig.from_args(args, sha256=info.sha256))
    labelled = read["images"] | "Label" >> LabelImages(
        handler, config, top_k=args.top_k, embeddings=args.embeddings
    )
    errors = (read[contract.ERRORS], labelled[contract.ERRORS]) | "AllErrors" >> beam.Flatten()
    return {contract.PREDICTIONS: labelled[contract.PREDICTIONS], contract.ERRORS: errors}


def build_watch_pipeline(
    pipeline, args, info: WeightsInfo, plan, config: watch.WatchConfig, *, handler=None, reader=None, s3=None
):
    """Adds the --watch job to `pipeline`: files as they land, labelled, committed one window at a time.

    `handler` and `reader` replace the real model handler and file reader (tests).
    """
    source = shards.InputConfig.from_args(args)
    stop, _ = watch.markers(args.output, plan.token)
    found = pipeline | "Watch" >> watch.WatchInputs(config, args.output, stop=stop, s3=s3)
    uris = found["uris"]
    read = uris | "Read" >> files.ReadImages(
        reader or shards.file_reader(source.max_bytes, source.read_timeout_s)
    )
    tables = label(read, args, info, handler=handler)
    provenance = options.provenance(args, info)
    schemas = write.schemas(provenance, embeddings=args.embeddings)
    written = tables | "Write" >> watch.WriteWindows(args.output, schemas, config, plan.token)
    spec = plan.commit(schemas, provenance)
    (written, found[watch.TICKS]) | "Commit" >> watch.CommitWindows(spec, s3)


def run(argv=None, save_main_session=False, test_pipeline=None, *, handler=None, reader=None, decode=None):
    """Runs the job; returns the Beam result. Raises one of USAGE_ERRORS before anything runs.

    handler, reader and decode replace the real model handler, reader and decoder (tests).
    """
    args, beam_args = options.parse_args(sys.argv[1:] if argv is None else argv)
    beam_options = options.pipeline_options(args, beam_args, save_main_session=save_main_session)
    # The launcher's own checks (input listing, output probe, --resume) go through the
    # same filesystems as the job, so they need its options (e.g. --s3_endpoint_url) too.
    FileSystems.set_options(beam_options)
    options.check_job_endpoint(beam_options)
    info = check_launch(args)
    if info.untrained:
        # Once per run, on the launcher, before anything is submitted.
        log.warning(contract.UNTRAINED_WARNING)
    s3 = options.s3_options(beam_options)
    if args.watch:
        return run_watch(args, beam_options, info, s3, test_pipeline=test_pipeline, handler=handler)
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


# The runners that mean "here, on this machine"; a --watch job runs on Prism there.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def run_watch(args, beam_options, info: WeightsInfo, s3, *, test_pipeline=None, handler=None):
    """--watch: the output completed and planned as for --resume, then the streaming job until it is stopped.

    SIGTERM or SIGINT to the launcher drains the job: no more files are taken, the windows
    that hold files already taken are committed, then the job is cancelled (drain()).
    """
    standard = beam_options.view_as(StandardOptions)
    standard.streaming = True
    if (standard.runner or "DirectRunner").rsplit(".", 1)[-1] in LOCAL_RUNNERS:
        # Beam's DirectRunner hands a streaming job to its bundle-based runner, which leaves
        # the periodic poll waiting; Prism, Beam's local portable runner, runs it.
        standard.runner = "PrismRunner"
        log.info("--watch on this machine: Beam's Prism runner (streaming) instead of the DirectRunner")
    table_options = delta.storage_options(args.output, s3)
    plan = resume.prepare(
        args.output,
        resume=True,
        retry_errors=False,
        provenance=options.provenance(args, info),
        embeddings=args.embeddings,
        options=table_options,
    )
    on_flink = options.runner_name(beam_options) in options.FLINK_RUNNERS
    before = watch.table_files(args.output, table_options)  # the summary counts what is committed after
    with contextlib.ExitStack() as launching:
        tick_service = flink_job = None
        if on_flink:
            # Polls ticked by a source Flink reads itself (watch.JavaTicks), expanded by Java.
            tick_service = launching.enter_context(options.flink_expansion_service(beam_options))
            flink_job = options.flink_job_name(beam_options, plan.token)  # the drain cancels it by name
        config = watch.WatchConfig.from_args(args, tick_service=tick_service)
        pipeline = test_pipeline or beam.Pipeline(options=beam_options)
        build_watch_pipeline(pipeline, args, info, plan, config, handler=handler, s3=s3)
        failpoints.hit("launched")
        log.info(
            "watching %s every %g s; windows of %g s committed to %s from run %d on; "
            "SIGTERM or Ctrl-C drains it",
            ", ".join(contract.printable(pattern) for pattern in config.patterns),
            config.poll_interval_s,
            config.window_s,
            contract.printable(args.output),
            plan.run,
        )
        start, submitted = time.monotonic(), time.time()
        result = pipeline.run()
    try:
        with _signals_raise():
            result.wait_until_finish()
    except _Stopped as stopped:
        log.info("%s: draining: no more files are taken; the windows of those taken are committed", stopped)
        drain(result, args.output, plan.token, config)
        if on_flink:
            # Beam's job server cancels its invocation, not the cluster's job (cancel_flink_job).
            options.cancel_flink_job(beam_options, flink_job, submitted)
    finally:
        watch.remove_markers(args.output, plan.token)
    found = watch.committed_since(args.output, table_options, before)
    if not on_flink:  # a cancelled streaming job on Flink reports no counters
        found["inputs_skipped"] = summary.counters(result).get("inputs_skipped", 0)
    print(summarize(result, time.monotonic() - start, args.max_error_fraction, found), flush=True)
    return result


# A drain gives up after this many windows and polls without a window committed.
DRAIN_WINDOWS = 10


def drain(result, output: str, token: str, config: watch.WatchConfig) -> None:
    """Stops a running --watch job without losing what it took: the stop marker, the last window, cancel.

    Every file the job took was listed before the stop marker was written, so it belongs to
    a window that ends by the first window end after now; once the commit step has
    finished that window (the progress marker), nothing taken is uncommitted. A second
    signal, the job ending by itself, or DRAIN_WINDOWS windows and polls without a window
    committed cancel at once: what was not committed is labelled by the next launch.
    """
    stop, progress = watch.markers(output, token)
    asked = time.time()
    watch.write_marker(stop, str(asked))
    patience = DRAIN_WINDOWS * (config.window_s + config.poll_interval_s)
    deadline, seen = time.monotonic() + patience, None
    try:
        with _signals_raise():
            while True:
                done = watch.committed_until(progress)
                if done != seen:  # a window was committed: the job is getting there
                    deadline, seen = time.monotonic() + patience, done
                if done is not None and done > asked:
                    log.info("drained: every window up to %s is committed", time.strftime(
                        "%H:%M:%S", time.gmtime(done)))  # fmt: skip
                    break
                if PipelineState.is_terminal(result.state):
                    log.warning("the job ended (%s) while draining", result.state)
                    return
                if time.monotonic() > deadline:
                    log.warning("no window was committed for %g s; cancelling: the next launch labels "
                                "what was not committed", patience)  # fmt: skip
                    break
                time.sleep(0.2)
    except _Stopped:
        log.warning("a second signal: cancelling now; the next launch labels what was not committed")
    result.cancel()


class _Stopped(Exception):
    """SIGTERM or SIGINT reached a --watch launcher."""


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM and SIGINT raise _Stopped (naming the signal) in the launcher's main thread."""

    def stop(signum, frame):
        del frame
        raise _Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
