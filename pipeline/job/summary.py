"""The end of a run: the job's counters added up into one summary line, and the error budget enforced."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter

from pipeline import METRICS_NAMESPACE
from pipeline.contract import STAGES


class JobFailed(RuntimeError):
    """The job ran but broke a promise (its error budget); every row is written."""


def counters(result) -> dict[str, int]:
    """The job's counters, summed over steps; committed values where the runner has them."""
    found: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        found[counter.key.metric.name] = found.get(counter.key.metric.name, 0) + (value or 0)
    return found


def summarize(result, wall_s: float, max_error_fraction: float, found: dict[str, int] | None = None) -> str:
    """The run's one-line summary, from the job's counters (or `found`, counters counted elsewhere).

    Raises:
        JobFailed: more than max_error_fraction of the inputs failed (the message holds the line).
    """
    found = counters(result) if found is None else found
    labelled = found.get("images_labelled", 0)
    failed = {stage: found.get(f"failed_{stage}", 0) for stage in STAGES}
    total = labelled + sum(failed.values())
    by_stage = ", ".join(f"{stage} {n}" for stage, n in failed.items())
    shards = f" from {found['shards_read']} shard(s)" if found.get("shards_read") else ""
    line = f"summary: {total} inputs{shards}, {labelled} labelled, {sum(failed.values())} failed ({by_stage})"
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
            "Every row is written; see the errors table (OUT/errors/) for what failed and why, or "
            "raise --max_error_fraction if that many bad inputs are expected."
        )
    return line
