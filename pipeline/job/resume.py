"""Re-runs and --resume: what a run does with the shards already in its output, and what is still to do.

Without --resume a run replaces the output's shards. With it, the shards stay: inputs
whose image_id is already in a predictions shard are skipped; so are those in an errors
shard, unless --retry_errors: then they are labelled again, the errors rows of inputs
not in this run's input are carried over into this attempt's errors shards, and the old
errors shards are deleted once the job has written its own. This attempt's shards get
their own names (pipeline.contract.shard_prefix), so no shard is ever overwritten.
Either way the union of all shards holds each input exactly once.

With a shard --input_format the inputs are the shards' members, known only once a shard
is read: pipeline.job.read.shards.ReadInputs skips whole shards that failed before (skip_failed)
and then the members already done (skip_done with a key function).
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE, ConfigError
from pipeline.contract import TABLE_KEYS, Shards, decode_provenance, disagreements, image_id
from pipeline.job.write import remove_empty_temp_dirs, remove_shards
from pipeline.storage import find_shards, read_schema

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this run does with the shards already in --output."""

    output: str
    previous: Shards = Shards()
    retry_errors: bool = False

    @property
    def attempt(self) -> int:
        """This run's attempt number: 0 for a fresh output, else 1 + the highest found."""
        return self.previous.next_attempt

    @property
    def resuming(self) -> bool:
        """Whether --output holds earlier shards to skip against (with --resume)."""
        return bool(self.previous.paths)

    def skip_done(self, inputs, *, key=image_id, also=None, label: str = "SkipDone"):
        """inputs -> (the inputs still to do, [old errors rows to carry into this attempt's shards]).

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

    def finish(self) -> None:
        """After the job: tidy the output; with --retry_errors, drop the replaced errors shards."""
        remove_empty_temp_dirs(self.output)
        if self.retry_errors and self.previous.errors:
            # Their rows are in this attempt's errors shards now (carried or retried).
            log.info("replacing %d earlier errors shard(s)", len(self.previous.errors))
            FileSystems.delete(list(self.previous.errors))


def prepare(
    output: str, *, resume: bool, retry_errors: bool, provenance: dict[str, str], embeddings: bool
) -> Plan:
    """On the launcher: replace the output's shards, or check that they can be resumed.

    Raises:
        ConfigError: --resume into shards written with other weights or settings.
    """
    found = find_shards(output)
    if not resume:
        remove_shards(found.paths)
        return Plan(output)
    check_compatible(found, provenance, embeddings=embeddings)
    if found.paths:
        log.info(
            "resuming: %d predictions and %d errors shards already in %s; new shards are attempt r%03d",
            len(found.predictions),
            len(found.errors),
            output,
            found.next_attempt,
        )
    return Plan(output, found, retry_errors)


def check_compatible(previous: Shards, provenance: dict[str, str], *, embeddings: bool) -> None:
    """Refuses to resume into shards written with other weights or settings.

    Raises:
        ConfigError: naming the setting that differs, its old and new value.
    """
    if not previous.paths:
        return
    path = (previous.predictions or previous.errors)[0]
    try:
        schema = read_schema(path)
    except Exception as error:  # a shard we cannot read cannot be resumed from
        raise ConfigError(
            f"--resume: cannot read the existing shard {path} ({error}); "
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
