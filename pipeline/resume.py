"""Re-runs and --resume: what a run does with the shards already in its output, and what is still to do.

Without --resume a run replaces the output's shards. With it, the shards stay: inputs
whose image_id is already in a predictions shard are skipped; so are those in an errors
shard, unless --retry_errors: then they are labelled again, the errors rows of inputs
not in this run's input are carried over into this attempt's errors shards, and the old
errors shards are deleted once the job has written its own. This attempt's shards get
their own names (pipeline.outputs.shard_prefix), so no shard is ever overwritten.
Either way the union of all shards holds each input exactly once.
"""

from __future__ import annotations

import dataclasses
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from pipeline import METRICS_NAMESPACE
from pipeline.inputs import image_id
from pipeline.options import ConfigError
from pipeline.outputs import (
    TABLE_KEYS,
    Shards,
    decode_provenance,
    disagreements,
    find_shards,
    read_schema,
    remove_empty_temp_dirs,
    remove_shards,
)

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

    def skip_done(self, uris):
        """uris -> (the uris still to do, [old errors rows to carry into this attempt's shards])."""
        if not self.previous.paths:
            return uris, []
        plan = uris | "SkipDone" >> SkipDone(self.previous, retry_errors=self.retry_errors)
        return plan["todo"], [plan["carried"]]

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
    """Per image_id: the input, if still to do (main output), or an old errors row to carry."""

    CARRIED = "carried"

    def __init__(self, retry_errors: bool):
        self._retry_errors = retry_errors
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "inputs_skipped")
        self._retried = Metrics.counter(METRICS_NAMESPACE, "errors_retried")

    def process(self, element):
        _, groups = element
        uris = sorted(set(groups["input"]))
        if list(groups["labelled"]):
            self._skipped.inc(len(uris))
            return
        failed = list(groups["failed"])
        if failed and not self._retry_errors:
            self._skipped.inc(len(uris))
            return
        if failed and not uris:  # an earlier input not in this run's: keep its row
            yield beam.pvalue.TaggedOutput(self.CARRIED, failed[0])
            return
        if failed:
            self._retried.inc(len(uris))
        yield from uris


class SkipDone(beam.PTransform):
    """uris -> {"todo": uris not yet in the output, "carried": old errors rows to rewrite}."""

    def __init__(self, previous: Shards, *, retry_errors: bool):
        super().__init__()
        self._previous = previous
        self._retry_errors = retry_errors

    def expand(self, uris):
        pipeline = uris.pipeline
        keyed = uris | "KeyInputs" >> beam.Map(lambda uri: (image_id(uri), uri))
        labelled = (
            pipeline
            | "OldPredictionShards" >> beam.Create(list(self._previous.predictions))
            | "ReadOldIds" >> ReadAllFromParquet(columns=["image_id"])
            | "KeyOldIds" >> beam.Map(lambda row: (row["image_id"], True))
        )
        failed = (
            pipeline
            | "OldErrorShards" >> beam.Create(list(self._previous.errors))
            | "ReadOldErrors" >> ReadAllFromParquet()
            | "KeyOldErrors" >> beam.Map(lambda row: (row["image_id"], row))
        )
        plans = (
            {"input": keyed, "labelled": labelled, "failed": failed}
            | "JoinWithOutput" >> beam.CoGroupByKey()
            | "Plan" >> beam.ParDo(_Plan(self._retry_errors)).with_outputs(_Plan.CARRIED, main="todo")
        )
        return {"todo": plans.todo, "carried": plans[_Plan.CARRIED]}
