"""Re-runs and --resume: what a run does with the output already there, and what is still to do.

Every run first completes an interrupted earlier one and deletes files no version uses
(pipeline.table: roll_forward, clean), then reads the output's last committed version.
Without --resume the run replaces both tables when it commits. With it, inputs whose
image_id is in the committed predictions are skipped; so are those in the committed
errors, unless --retry_errors: then they are labelled again, the errors rows of inputs
not in this run's input are carried into this run's errors files, and the run's commit
replaces the errors table's files with its own. Either way the committed tables hold
each input exactly once.

With a shard --input_format the inputs are the shards' members, known only once a shard
is read: pipeline.job.read.shards.ReadInputs skips whole shards that failed before (skip_failed)
and then the members already done (skip_done with a key function).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline import table as delta
from pipeline.contract import (
    ERRORS,
    PREDICTIONS,
    TABLE_KEYS,
    TABLES,
    Shards,
    decode_provenance,
    disagreements,
    image_id,
    legacy_glob,
)
from pipeline.storage import first_cause, match, read_schema

log = logging.getLogger(__name__)
# Footers of committed files checked at once before a --resume.
FOOTER_THREADS = 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this run does with the output already in --output, and how it commits."""

    output: str
    run: int = 1
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])  # unique per launch
    previous: Shards = Shards()
    resume: bool = False
    retry_errors: bool = False

    @property
    def resuming(self) -> bool:
        """Whether the output holds committed rows to skip against (with --resume)."""
        return bool(self.previous.paths)

    @property
    def replace_predictions(self) -> bool:
        return not self.resume

    @property
    def replace_errors(self) -> bool:
        """A fresh run, or --retry_errors: this run's errors files hold every errors row that stays."""
        return not self.resume or self.retry_errors

    def commit(self, schemas: dict[str, pa.Schema], provenance: dict[str, str]) -> delta.RunCommit:
        """What the commit step commits (its files are filled in by the step)."""
        return delta.RunCommit(
            output=self.output,
            run=self.run,
            files={table: [] for table in TABLES},
            replace_errors=self.replace_errors,
            replace_predictions=self.replace_predictions,
            schemas=schemas,
            provenance=provenance,
            token=self.token,
        )

    def skip_done(self, inputs, *, key=image_id, also=None, label: str = "SkipDone"):
        """inputs -> (the inputs still to do, [old errors rows to carry into this run's errors files]).

        key(input) is an input's image_id (default: the input is a uri). `also`, a
        PCollection of image ids, are inputs of this run with nothing left to do here: the
        shards read, whose members are the inputs. Their old errors rows are replaced, never
        carried, and they were counted where they were planned (skip_failed).
        """
        if not self.resuming:
            return inputs, []
        source = inputs if also is None else {"inputs": inputs, "also": also}
        plan = source | label >> SkipDone(self.previous, retry_errors=self.retry_errors, key=key)
        return plan["todo"], [plan["carried"]]

    def skip_failed(self, uris, *, label: str = "SkipFailedShards"):
        """uris -> those to open: all but those with an old errors row of their own, unless --retry_errors.

        For shards: one that could not be opened, or was damaged, stays as it was (its
        rows are in the output) unless --retry_errors. Carries no rows: skip_done does.
        """
        if not self.previous.errors:
            return uris
        errors_only = Shards(errors=self.previous.errors)
        plan = uris | label >> SkipDone(errors_only, retry_errors=self.retry_errors, carry=False)
        return plan["todo"]


def prepare(
    output: str,
    *,
    resume: bool,
    retry_errors: bool,
    provenance: dict[str, str],
    embeddings: bool,
    options: dict[str, str] | None = None,
) -> Plan:
    """On the launcher: complete and tidy the output, then plan this run against its committed version.

    Raises:
        ConfigError: --resume into an output written with other weights or settings, a
            0.1 output, or tables that cannot be read or completed.
    """
    options = delta.storage_options(output) if options is None else options
    try:
        found = delta.snapshot(output, options)
        if not found.exists and match(legacy_glob(output, PREDICTIONS)) + match(legacy_glob(output, ERRORS)):
            if resume:
                raise ConfigError(
                    f"--resume: {output} holds an output of vgg16-beam 0.1 (flat Parquet shards); "
                    f"convert it first with: python -m pipeline.upgrade {output}"
                )
            log.warning(
                "%s holds flat Parquet shards of vgg16-beam 0.1: left as they are; this run writes the "
                "tables %s/ and %s/ beside them (python -m pipeline.upgrade converts them)",
                output,
                PREDICTIONS,
                ERRORS,
            )
        if found.pending:
            delta.roll_forward(output, options)
            found = delta.snapshot(output, options)
        delta.clean(output, committed_provenance(found), options)
    except delta.TableError as error:
        raise ConfigError(str(error)) from error
    plan = Plan(output, run=found.next_run)  # cleanup commits carry no run number
    if not resume:
        return plan
    previous = Shards(predictions=tuple(found.files(PREDICTIONS)), errors=tuple(found.files(ERRORS)))
    check_readable(previous)
    check_compatible(previous, provenance, embeddings=embeddings)
    if previous.paths:
        log.info(
            "resuming: %d predictions and %d errors rows already in %s (run %d); this is run %d",
            found.rows(PREDICTIONS),
            found.rows(ERRORS),
            output,
            found.run,
            plan.run,
        )
    return dataclasses.replace(plan, previous=previous, resume=True, retry_errors=retry_errors)


def committed_provenance(found: delta.Snapshot) -> dict[str, str]:
    """The provenance in the footer of the committed version's first file (none: {})."""
    files = found.files(PREDICTIONS) or found.files(ERRORS)
    if not files:
        return {}
    try:
        return decode_provenance(read_schema(files[0]).metadata)
    except Exception:  # unreadable: check_readable names it when it matters (--resume)
        return {}


def check_readable(previous: Shards) -> None:
    """Reads the footer of every committed file: a damaged one is one error line, not a traceback in the job.

    Raises:
        ConfigError: naming the first file that cannot be read.
    """

    def footer(path: str):
        try:
            read_schema(path)
            return None
        except Exception as error:
            return path, first_cause(error)

    with concurrent.futures.ThreadPoolExecutor(FOOTER_THREADS) as pool:
        failed = [found for found in pool.map(footer, previous.paths) if found]
    if failed:
        path, why = failed[0]
        raise ConfigError(
            f"--resume: the output's file {path} cannot be read ({why}; {len(failed)} file(s) in all); "
            "run without --resume to replace the output."
        )


def check_compatible(previous: Shards, provenance: dict[str, str], *, embeddings: bool) -> None:
    """Refuses to resume into tables written with other weights or settings.

    Raises:
        ConfigError: naming the setting that differs, its old and new value.
    """
    if not previous.paths:
        return
    path = (previous.predictions or previous.errors)[0]
    try:
        schema = read_schema(path)
    except Exception as error:  # a file we cannot read cannot be resumed from
        raise ConfigError(
            f"--resume: cannot read the output's file {path} ({first_cause(error)}); "
            "run without --resume to replace the output."
        ) from error
    differences = disagreements(decode_provenance(schema.metadata), provenance, TABLE_KEYS)
    if previous.predictions and ("fc7" in schema.names) != embeddings:
        differences.append(f"embeddings {'fc7' in schema.names} -> {embeddings}")
    if differences:
        raise ConfigError(
            f"--resume: the output was written with other settings ({'; '.join(differences)}); "
            "resume with the same --weights/--resize/--precision/--top_k/--embeddings, "
            "or run without --resume to replace the output."
        )


class _Plan(beam.DoFn):
    """Per image_id: the inputs, if still to do (main output), or an old errors row to carry."""

    CARRIED = "carried"

    def __init__(self, retry_errors: bool, carry: bool = True):
        self._retry_errors = retry_errors
        self._carry = carry
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "inputs_skipped")
        self._retried = Metrics.counter(METRICS_NAMESPACE, "errors_retried")

    def process(self, element):
        _, groups = element
        inputs = list(groups["input"])
        planned = bool(list(groups.get("also", ())))
        count = 0 if planned else len(inputs)  # an "also" id was counted where it was planned
        failed = list(groups["failed"])
        if list(groups["labelled"]) or (failed and not self._retry_errors):
            self._skipped.inc(count)
            return
        if failed and not inputs:
            if self._carry and not planned:  # an earlier input not in this run's: keep its row
                yield beam.pvalue.TaggedOutput(self.CARRIED, failed[0])
            return
        if failed:
            self._retried.inc(count)
        yield from inputs


def _keyed(element, key):
    return key(element), element


class SkipDone(beam.PTransform):
    """inputs -> {"todo": inputs not yet in the output, "carried": old errors rows to rewrite}.

    The join of this run's inputs with the old shards on image_id. An input is a uri
    (key=image_id), or anything else whose image_id key() gives. Given a dict
    {"inputs": ..., "also": image ids}, the ids in "also" count as this run's inputs that
    yield nothing (see Plan.skip_done). With carry=False no old row is carried.
    """

    def __init__(self, previous: Shards, *, retry_errors: bool, key=image_id, carry: bool = True):
        super().__init__()
        self._previous = previous
        self._retry_errors = retry_errors
        self._key = key
        self._carry = carry

    def expand(self, source):
        inputs, also = (source["inputs"], source["also"]) if isinstance(source, dict) else (source, None)
        pipeline = inputs.pipeline
        groups = {"input": inputs | "KeyInputs" >> beam.Map(_keyed, self._key)}
        if also is not None:
            groups["also"] = also | "KeyAlso" >> beam.Map(lambda found: (found, True))
        groups["labelled"] = (
            pipeline
            | "OldPredictionShards" >> beam.Create(list(self._previous.predictions))
            | "ReadOldIds" >> ReadAllFromParquet(columns=["image_id"])
            | "KeyOldIds" >> beam.Map(lambda row: (row["image_id"], True))
        )
        groups["failed"] = (
            pipeline
            | "OldErrorShards" >> beam.Create(list(self._previous.errors))
            | "ReadOldErrors" >> ReadAllFromParquet()
            | "KeyOldErrors" >> beam.Map(lambda row: (row["image_id"], row))
        )
        plans = (
            groups
            | "JoinWithOutput" >> beam.CoGroupByKey()
            | "Plan"
            >> beam.ParDo(_Plan(self._retry_errors, self._carry)).with_outputs(_Plan.CARRIED, main="todo")
        )
        return {"todo": plans.todo, "carried": plans[_Plan.CARRIED]}
