"""--watch: the job unbounded. Files are found as they land, labelled, and committed one window at a time.

    PeriodicImpulse (a tick every --poll_interval_s) -> the batch job's own listing of the
    --input patterns -> FirstSeen (once per launch) -> SkipCommitted (the output table says
    what is done) -> windows of --window_s -> ReadImages -> LabelImages -> WriteWindows (each
    window's rows to data files) -> CommitWindows (each window one append to both tables).

Exactly once. A file is labelled once per launch: FirstSeen keeps a keyed "seen" flag per
uri in the runner's state, which a runner with checkpoints (Flink, Dataflow) restores after
a fault. Across launches, and after a restart from nothing, the output decides: every
worker holds the image_ids of both committed tables, looked at again once per poll, and
skips them (SkipCommitted), so a restarted job picks up what landed while it was down and
nothing it had committed. Each pane of a window (the one when the watermark passes its
end, and one for rows that reach it late) commits as the next run of the table protocol
(pipeline.table), and records which pane it was; a retried commit finds its pane in the
tables and commits nothing twice. The files of a pane whose commit never happened were
never part of the output, and their inputs are labelled again.

Why not Beam's fileio.MatchContinuously: it lists local folders with Python's glob, which
follows links to folders (a link to a parent lists the tree again on every poll) and
leaves special files and names that are not UTF-8 to fail the poll, where the batch job
lists like the shell and makes each such entry an errors row (pipeline.storage.expand);
and its timestamp cursor, which bounds its state, skips a file that lands with an older
modification time (`mv`, `cp -p`, `rsync -t` keep it). Here the listing is the batch
job's, and the state is one flag per file, keyed, held by the runner.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.coders import BooleanCoder
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.external import ExternalTransform, ImplicitSchemaPayloadBuilder
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline import table as delta
from pipeline.contract import (
    ERRORS,
    METADATA_PREFIX,
    PREDICTIONS,
    SUFFIX,
    TABLES,
    image_id,
    join,
    printable,
    uri_path,
)
from pipeline.job import failpoints
from pipeline.job.read.files import absolute
from pipeline.job.write import PARQUET, parquet_writer, rows_to_batch
from pipeline.storage import expand, first_cause, is_local

log = logging.getLogger(__name__)

# projects/PROJECT/subscriptions/NAME, as Pub/Sub names them.
SUBSCRIPTION = re.compile(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/subscriptions/[A-Za-z][\w.~+%-]{2,254}")
TICKS = "ticks"
TICK = "tick"  # what a poll's tick is on its way to the commit step
WATCH_FOLDER = ".watch"  # OUT/.watch/: the markers of a running launch (markers())
POLL_INTERVAL_S = 60.0
WINDOW_S = 60.0
# A local file modified less than this long ago may still be being written (a copy in
# progress): it is left for a later poll. Objects in a bucket appear whole.
SETTLE_S = 5.0
# How long after a window's end its rows are still taken (in a late pane of their own): a
# row that a runner brings after the watermark passed its window is committed, not dropped.
ALLOWED_LATENESS_S = 3600
# A pane's commit records `TOKEN:WINDOW_START_MICROS:PANE_INDEX` under this key; a retried
# commit looks for it among the output's last PANE_LOOKBACK versions.
PANE_KEY = f"{METADATA_PREFIX}watch_pane"
PANE_LOOKBACK = 1000


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """How a --watch job finds files and commits them (--poll_interval_s, --window_s, --settle_s).

    `origin` is the launch's time (seconds since the epoch): Beam's PeriodicImpulse ticks from it.
    """

    patterns: tuple[str, ...]
    poll_interval_s: float = POLL_INTERVAL_S
    window_s: float = WINDOW_S
    settle_s: float = SETTLE_S
    shards: int = 1
    origin: float = 0.0
    pubsub: str | None = None  # a subscription to the bucket's notifications, instead of listing
    # A Java expansion service's address: polls are ticked by Java's GenerateSequence (JavaTicks),
    # a source the Flink runner reads itself, instead of Beam's PeriodicImpulse.
    tick_service: str | None = None

    def __post_init__(self):
        for flag, value, low in (
            ("--poll_interval_s", self.poll_interval_s, 0.1),
            ("--window_s", self.window_s, 1.0),
        ):
            if not (math.isfinite(value) and value >= low):
                raise ConfigError(f"{flag} must be at least {low:g} seconds. Received: {value}")
        if not (math.isfinite(self.settle_s) and self.settle_s >= 0):
            raise ConfigError(f"--settle_s must be 0 seconds or more. Received: {self.settle_s}")
        if self.shards < 1:
            raise ConfigError(f"--window_shards must be at least 1. Received: {self.shards}")
        if self.pubsub is not None:
            if not SUBSCRIPTION.fullmatch(self.pubsub):
                raise ConfigError(
                    "--watch_pubsub takes a subscription, projects/PROJECT/subscriptions/NAME. "
                    f"Received: {self.pubsub!r}"
                )
            if not all(pattern.startswith("gs://") for pattern in self.patterns):
                raise ConfigError(
                    "--watch_pubsub takes the notifications of Cloud Storage buckets: every --input must "
                    "be a gs:// pattern (the objects a notification names are kept if a pattern matches)."
                )

    @classmethod
    def from_args(cls, args, *, origin: float | None = None, tick_service: str | None = None) -> WatchConfig:
        """The watch settings of a run; refuses what --watch cannot do (ConfigError, naming the flag)."""
        if args.input_list or args.input_format != "files" or not args.input:
            raise ConfigError(
                "--watch labels loose files as they land under --input patterns: pass --input PATTERN "
                "(repeatable), without --input_list and with --input_format files."
            )
        if args.retry_errors:
            raise ConfigError(
                "--watch appends each window to the output and never relabels what it holds; "
                "--retry_errors needs a batch run (--resume --retry_errors)."
            )
        given = {
            "pubsub": args.watch_pubsub,
            "poll_interval_s": args.poll_interval_s,
            "window_s": args.window_s,
            "settle_s": args.settle_s,
            "shards": args.window_shards,
        }
        return cls(
            patterns=tuple(absolute(pattern) for pattern in args.input),
            origin=time.time() if origin is None else origin,
            tick_service=tick_service,
            **{name: value for name, value in given.items() if value is not None},
        )


# ------------------------------------------------------------------- finding files


# Java's GenerateSequence, as Beam's expansion services know it (GenerateSequence.External).
GENERATE_SEQUENCE = "beam:external:java:generate_sequence:v1"


class JavaTicks(beam.PTransform):
    """PBegin -> a tick every `interval_s`, stamped when made: Java's GenerateSequence, expanded by `service`.

    On the portable Flink runner, Beam's PeriodicImpulse is a splittable DoFn whose state
    grows with every poll until a TaskManager runs out of memory (apache/beam#27648, open);
    GenerateSequence with the use_deprecated_read experiment (options.flink_expansion_service)
    is a Read of an unbounded source, which Flink reads itself, checkpoints, and whose
    watermark follows the clock.
    """

    def __init__(self, interval_s: float, service: str):
        super().__init__()
        self._interval_ms = max(1, round(interval_s * 1000))
        self._service = service

    def expand(self, pbegin):
        payload = {"start": 0, "period": self._interval_ms, "elements_per_period": 1}
        return pbegin | "GenerateSequence" >> ExternalTransform(
            GENERATE_SEQUENCE, ImplicitSchemaPayloadBuilder(payload), self._service
        )


def list_settled(tick, patterns: tuple[str, ...], settle_s: float, stop: str | None = None, now=time.time):
    """One poll: every uri the patterns match, as the batch job lists them, less local files still settling.

    A pattern that cannot be listed this time (storage down, a folder removed) is logged
    and tried again at the next poll; it never stops the job. Once the launcher has asked
    the job to stop (`stop`, a marker file, is there), nothing more is listed. Every poll
    also gives a TICK on its own output, so that every window reaches the commit step.
    """
    yield beam.pvalue.TaggedOutput(TICKS, tick)
    if stop and _exists(stop):
        return
    for pattern in patterns:
        try:
            for uri in expand(pattern):
                if settle_s and is_local(uri) and _settling(uri_path(uri), now() - settle_s):
                    continue
                yield uri
        except Exception as error:  # the next poll tries again
            Metrics.counter(METRICS_NAMESPACE, "watch_list_failed").inc()
            log.warning("--watch: %s cannot be listed now (%s); trying again at the next poll",
                        printable(pattern), first_cause(error))  # fmt: skip


def notified(message, patterns: tuple[str, ...], now=time.time):
    """A Cloud Storage notification -> the gs:// uri of the object it finalized, if a pattern matches it.

    Pub/Sub messages of a bucket's notification configuration carry the event in their
    attributes (eventType, bucketId, objectId); only OBJECT_FINALIZE, a new object or a
    new generation of one, names a file to label.
    """
    attributes = message.attributes or {}
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return
    uri = f"gs://{attributes.get('bucketId', '')}/{attributes.get('objectId', '')}"
    if any(re.fullmatch(FileSystem.translate_pattern(pattern), uri) for pattern in patterns):
        Metrics.counter(METRICS_NAMESPACE, "watch_notifications").inc()
        # Stamped with now, as a poll's files are with the poll: a message published before
        # the launch (the subscription's backlog) would otherwise fall in a window long
        # closed, and wait for a late pane.
        yield window.TimestampedValue(uri, now())


def _exists(uri: str) -> bool:
    try:
        return FileSystems.exists(uri)
    except Exception:  # storage down: ask again at the next poll
        return False


def _settling(path: str, cutoff: float) -> bool:
    try:
        return os.lstat(path).st_mtime > cutoff
    except OSError:  # gone again, or unreadable: reading it makes its errors row
        return False


class SkipCommitted(beam.DoFn):
    """uri -> uri, unless its image_id is in the output's committed tables.

    The committed tables are what decides, not this job's memory: each worker reads the
    image_id column of every committed file (16 bytes per image_id, held sorted, not the
    rows), and looks again at most every `refresh_s` seconds for files committed since,
    reading only those. So a job that restarts from nothing (no checkpoint, FirstSeen's
    state gone) lists every file again and labels none of those its earlier windows committed.
    """

    def __init__(self, output: str, s3: dict | None = None, *, refresh_s: float):
        self._output = output
        self._s3 = dict(s3 or {})
        self._refresh_s = refresh_s
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "inputs_skipped")

    def setup(self):
        self._files: set[str] = set()
        self._done = np.empty(0, dtype="S16")
        self._checked = -math.inf

    def process(self, uri: str):
        if time.monotonic() - self._checked >= self._refresh_s:
            self._refresh()
        key = np.bytes_(bytes.fromhex(image_id(uri)))
        at = int(np.searchsorted(self._done, key))
        if at < len(self._done) and self._done[at] == key:
            self._skipped.inc()
            return
        yield uri

    def _refresh(self) -> None:
        found = delta.snapshot(self._output, delta.storage_options(self._output, self._s3))
        files = {path for table in TABLES for path in found.files(table)}
        parts = [self._done]
        for path in sorted(files - self._files):
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                column = pq.read_table(handle, columns=["image_id"], pre_buffer=False).column("image_id")
            parts.append(np.array([bytes.fromhex(found) for found in column.to_pylist()], dtype="S16"))
        self._done = np.unique(np.concatenate(parts))  # sorted
        self._files = files
        self._checked = time.monotonic()


class FirstSeen(beam.DoFn):
    """(uri, _) -> uri the first time this launch sees it; a flag per uri in the runner's keyed state."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def __init__(self):
        self._found = Metrics.counter(METRICS_NAMESPACE, "watch_files_found")

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):  # noqa: B008 (Beam's way)
        uri, _ = element
        if seen.read():
            return
        seen.write(True)
        self._found.inc()
        yield uri


class WatchInputs(beam.PTransform):
    """PBegin -> {"uris": each new input uri once, "ticks": one per poll}, stamped with the poll, in windows.

    Windows are --window_s long. `output` is the job's --output (SkipCommitted reads its
    tables; `s3`: the job's S3 options), `stop` the launcher's stop marker (markers()).
    """

    def __init__(self, config: WatchConfig, output: str, *, stop: str | None = None, s3: dict | None = None):
        super().__init__()
        self._config = config
        self._output = output
        self._stop = stop
        self._s3 = s3

    def expand(self, pbegin):
        config = self._config
        if config.tick_service:
            ticker = JavaTicks(config.poll_interval_s, config.tick_service)
        else:
            ticker = PeriodicImpulse(
                start_timestamp=Timestamp.of(config.origin), fire_interval=config.poll_interval_s
            )
        listed = (
            pbegin
            | "Poll" >> ticker
            | "List"
            >> beam.FlatMap(
                list_settled, () if config.pubsub else config.patterns, config.settle_s, self._stop
            ).with_outputs(TICKS, main="uris")
        )
        found = listed.uris
        if config.pubsub:
            # The bucket says what lands; the polls only tick (and see the stop marker).
            found = (
                pbegin
                | "Notifications" >> ReadFromPubSub(subscription=config.pubsub, with_attributes=True)
                | "Finalized" >> beam.FlatMap(notified, config.patterns)
            )
        uris = (
            found
            | "KeyByUri" >> beam.Map(lambda uri: (uri, True)).with_output_types(tuple[str, bool])
            | "FirstSeen" >> beam.ParDo(FirstSeen())
            | "SkipCommitted"
            >> beam.ParDo(SkipCommitted(self._output, self._s3, refresh_s=config.poll_interval_s))
            | "Windows"
            >> beam.WindowInto(window.FixedWindows(config.window_s), allowed_lateness=ALLOWED_LATENESS_S)
        )
        ticks = listed[TICKS] | "TickWindows" >> beam.WindowInto(
            window.FixedWindows(config.window_s), allowed_lateness=ALLOWED_LATENESS_S
        )
        return {"uris": uris, TICKS: ticks}


# ------------------------------------------------------------------- stopping


def markers(output: str, token: str) -> tuple[str, str]:
    """The launch's two marker files in OUT/.watch/: (stop: the launcher asks the job to stop, progress).

    The progress marker holds the end (seconds since the epoch) of the last window the
    commit step finished, whether it had files or not; windows finish in order.
    """
    folder = join(output, WATCH_FOLDER)
    return join(folder, f"{token}.stop"), join(folder, f"{token}.progress")


def write_marker(uri: str, text: str) -> None:
    if is_local(uri):
        os.makedirs(os.path.dirname(uri_path(uri)), exist_ok=True)
    with FileSystems.create(uri) as handle:
        handle.write(text.encode())


def committed_until(progress: str) -> float | None:
    """The end of the last window the commit step finished (None: none yet, or unreadable now)."""
    try:
        with FileSystems.open(progress, compression_type="uncompressed") as handle:
            return float(handle.read().decode())
    except Exception:  # not there yet, or being replaced
        return None


def remove_markers(output: str, token: str) -> None:
    for uri in markers(output, token):
        try:
            FileSystems.delete([uri])
        except Exception:  # never written
            continue
    if is_local(output):
        try:
            os.rmdir(uri_path(join(output, WATCH_FOLDER)))
        except OSError:  # another launch's markers are there, or it is gone
            pass


def table_files(output: str, options: dict[str, str]) -> set[str]:
    """Every data file both committed tables reference now."""
    found = delta.snapshot(output, options)
    return {path for table in TABLES for path in found.files(table)}


def committed_since(output: str, options: dict[str, str], before: set[str]) -> dict[str, int]:
    """What the windows committed after `before` (table_files at the launch) hold, as the summary's counters.

    A --watch launch's summary counts its committed rows, not the runner's counters: a
    streaming job that is cancelled (Flink) reports none, and only what is committed counts.
    """
    found: dict[str, int] = {"images_labelled": 0}
    snapshot = delta.snapshot(output, options)
    for table in TABLES:
        for path in sorted(set(snapshot.files(table)) - before):
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                if table == PREDICTIONS:
                    found["images_labelled"] += pq.read_metadata(handle).num_rows
                    continue
                stages = pq.read_table(handle, columns=["stage"], pre_buffer=False).column("stage")
            for stage in stages.to_pylist():
                found[f"failed_{stage}"] = found.get(f"failed_{stage}", 0) + 1
    return found


# ------------------------------------------------------------------- writing and committing windows


def _shard(row: dict, shards: int) -> int:
    return int(row["image_id"][:8], 16) % shards


class _WriteWindowFile(beam.DoFn):
    """(shard, rows of one pane of a window) -> (table, DataFile): a data file, named after the window.

    Each attempt writes a file of its own name; only the attempt the runner keeps reaches
    the commit, and a file no commit names is deleted by the next launch's cleanup.
    """

    def __init__(self, output: str, table: str, schema: pa.Schema, token: str):
        self._output = output
        self._table = table
        self._schema = schema
        self._token = token

    def process(self, element, win=beam.DoFn.WindowParam):
        shard, rows = element
        folder = delta.table_uri(self._output, self._table)
        name = f"{delta.DATA_PREFIX}w{win.start.micros // 1_000_000}-{self._token}-{shard:05d}"
        uri = join(folder, f"{name}-{uuid.uuid4().hex[:8]}{SUFFIX}")
        batch = PARQUET["record_batch_size"][self._table]
        with FileSystems.create(uri) as handle:
            writer = parquet_writer(handle, self._schema)
            pending: list[dict] = []
            for row in rows:
                pending.append(row)
                if len(pending) >= batch:
                    writer.write_batch(rows_to_batch(pending, self._schema))
                    pending = []
            if pending:
                writer.write_batch(rows_to_batch(pending, self._schema))
            writer.close()
        yield self._table, delta.describe(self._output, self._table, uri)


class WriteWindows(beam.PTransform):
    """{table: windowed rows} -> (table, DataFile) of every data file written, in the rows' windows."""

    def __init__(self, output: str, schemas: dict[str, pa.Schema], config: WatchConfig, token: str):
        super().__init__()
        self._output = output
        self._schemas = schemas
        self._config = config
        self._token = token

    def expand(self, tables):
        shards = self._config.shards
        written = [
            tables[table]
            | f"Shard{table.title()}" >> beam.Map(lambda row: (_shard(row, shards), row))
            | f"Group{table.title()}" >> beam.GroupByKey()
            | f"Write{table.title()}"
            >> beam.ParDo(_WriteWindowFile(self._output, table, self._schemas[table], self._token))
            for table in TABLES
        ]
        return written | "AllFiles" >> beam.Flatten()


class _CommitWindow(beam.DoFn):
    """(_, [(table, DataFile) or TICK]) of each pane of a window -> its files committed as the next run.

    The panes a bundle brings are committed at its end, oldest window first, each as one
    run of both tables (errors first), recording its pane (PANE_KEY): a retried commit
    finds that record, reuses its run, and adds nothing twice. Then the progress marker
    says how far the windows have come. A window's pane on time comes as the watermark
    passes it; rows that reach a window later come in a late pane of their own.
    """

    def __init__(self, spec: delta.RunCommit, s3: dict):
        self._spec = spec
        self._s3 = s3
        self._progress = markers(spec.output, spec.token)[1]
        self._windows = Metrics.counter(METRICS_NAMESPACE, "watch_windows_committed")

    def start_bundle(self):
        self._pending: list = []

    def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):  # noqa: B008
        _, written = element
        self._pending.append((win, pane, [found for found in written if found != TICK]))
        return ()  # everything happens in finish_bundle

    def finish_bundle(self):
        if not self._pending:
            return
        for win, pane, written in sorted(self._pending, key=lambda found: (found[0].start, found[1].index)):
            if written:
                self._commit(written, win, pane)
        end = max(win.end for win, _, _ in self._pending).micros / 1_000_000
        before = committed_until(self._progress)
        if before is None or end > before:  # a retried bundle never moves it back
            write_marker(self._progress, str(end))
        self._pending = []

    def _commit(self, written, win, pane) -> int:
        files = {table: sorted((found for name, found in written if name == table), key=lambda f: f.path)
                 for table in TABLES}  # fmt: skip
        output = self._spec.output
        options = delta.storage_options(output, self._s3)
        identity = f"{self._spec.token}:{win.start.micros}:{pane.index}"
        failpoints.hit("commit")
        run = delta.run_of_commit(output, PANE_KEY, identity, options, PANE_LOOKBACK) or delta.next_run(
            output, options
        )
        commit = dataclasses.replace(self._spec, run=run, files=files, metadata={PANE_KEY: identity})
        delta.commit_errors(commit, options)
        failpoints.hit("commit.between")
        delta.commit_predictions(commit, options)
        failpoints.hit("committed")
        self._windows.inc()
        rows = {table: sum(found.rows for found in files[table]) for table in TABLES}
        # Measured from the window's start: no file found in it waited longer since it was listed.
        lag = time.time() - win.start.micros / 1_000_000
        log.info(
            "window %s-%s%s: run %d committed: %d input(s), %d labelled, %d error(s), %.1f s after it opened",
            _clock(win.start),
            _clock(win.end),
            "" if pane.timing != PaneInfoTiming.LATE else f" (late, pane {pane.index})",
            run,
            rows[PREDICTIONS] + rows[ERRORS],
            rows[PREDICTIONS],
            rows[ERRORS],
            lag,
        )
        return run


def _clock(at: Timestamp) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at.micros / 1_000_000))


class CommitWindows(beam.PTransform):
    """((table, DataFile) in windows, ticks) -> nothing: each window's files committed as one run.

    The ticks (one per poll) make every window, empty or not, reach the commit step, which
    then records it in the progress marker: a stopping launcher waits on that (markers()).
    """

    def __init__(self, spec: delta.RunCommit, s3: dict | None = None):
        super().__init__()
        self._spec = spec
        self._s3 = dict(s3 or {})

    def expand(self, inputs):
        written, ticks = inputs
        return (
            (written, ticks | "AsTicks" >> beam.Map(lambda _: TICK))
            | "FilesAndTicks" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda found: (None, found))
            | "Together" >> beam.GroupByKey()
            | "Commit" >> beam.ParDo(_CommitWindow(self._spec, self._s3))
        )
