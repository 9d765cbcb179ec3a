"""Resuming into an existing output: the shards already there, this attempt's names, the inputs still to do.

A first run writes `predictions-00000-of-00004.parquet`; resumed attempt n writes
`predictions-r00n-00000-of-00002.parquet` beside it, so no shard is ever overwritten and
every shard still matches `predictions-*-of-*.parquet` (what readers and a replacing
re-run look for). Inputs whose image_id is already in a predictions shard are skipped;
so are those in an errors shard, unless --retry_errors: then they are labelled again,
the errors rows of inputs not in this run's input are carried over into this attempt's
errors shards, and the old errors shards are deleted once the job has written its own.
Either way the union of all shards holds each input exactly once.
"""

from __future__ import annotations

import dataclasses
import re

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from pipeline import io
from pipeline.options import ConfigError

_ATTEMPT = re.compile(r"-r(\d+)-\d+-of-\d+\.parquet$")
# Provenance that must match for old and new rows to belong in one table.
_MUST_MATCH = ("weights_sha256", "resize", "precision", "top_k")


@dataclasses.dataclass(frozen=True)
class Previous:
    """The shards of earlier runs in an output directory."""

    predictions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return self.predictions + self.errors

    @property
    def next_attempt(self) -> int:
        """1 + the highest attempt number found (a first run's shards count as attempt 0)."""
        found = [int(m.group(1)) for p in self.paths if (m := _ATTEMPT.search(p))]
        return max(found, default=0) + 1 if self.paths else 0


def find_previous(output: str) -> Previous:
    paths = io.existing_outputs(output)

    def named(name: str) -> tuple[str, ...]:
        return tuple(p for p in paths if p.replace("\\", "/").rsplit("/", 1)[-1].startswith(f"{name}-"))

    return Previous(predictions=named(io.PREDICTIONS_PREFIX), errors=named(io.ERRORS_PREFIX))


def shard_prefix(output: str, name: str, attempt: int) -> str:
    """The file prefix WriteToParquet gets: `output/name` for attempt 0, else `output/name-r00n`."""
    base = io.output_prefix(output, name)
    return base if attempt == 0 else f"{base}-r{attempt:03d}"


def _footer(path: str) -> tuple[dict[str, str], list[str]]:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        schema = pq.read_schema(handle)
    metadata = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    return metadata, schema.names


def check_compatible(previous: Previous, metadata: dict[str, str], *, embeddings: bool) -> None:
    """Refuses to resume into shards written with other weights or settings (on the launcher).

    Raises:
        ConfigError: naming the setting that differs, its old and new value.
    """
    if not previous.paths:
        return
    path = (previous.predictions or previous.errors)[0]
    try:
        found, names = _footer(path)
    except Exception as error:  # a shard we cannot read cannot be resumed from
        raise ConfigError(
            f"--resume: cannot read the existing shard {path} ({error}); "
            "run without --resume to replace the output."
        ) from error
    differences = [
        f"{key} {found.get(f'vgg16.{key}')!r} -> {metadata[key]!r}"
        for key in _MUST_MATCH
        if found.get(f"vgg16.{key}") != metadata[key]
    ]
    if previous.predictions and ("fc7" in names) != embeddings:
        differences.append(f"embeddings {'fc7' in names} -> {embeddings}")
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
        self._skipped = Metrics.counter("vgg16", "inputs_skipped")
        self._retried = Metrics.counter("vgg16", "errors_retried")

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

    def __init__(self, previous: Previous, *, retry_errors: bool):
        super().__init__()
        self._previous = previous
        self._retry_errors = retry_errors

    def expand(self, uris):
        pipeline = uris.pipeline
        keyed = uris | "KeyInputs" >> beam.Map(lambda uri: (io.image_id(uri), uri))
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
