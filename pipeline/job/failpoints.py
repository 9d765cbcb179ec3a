"""Failpoints: named places in the job where a test can hold a worker, set through the environment.

A test that must act while the job is at a known step (kill a Flink TaskManager while
it labels, cancel a job before it can finish) cannot learn that from the clock: a slow or
busy machine moves every step. Instead the job calls `hit(NAME)` at a few places, and
the environment variable PIPELINE_FAILPOINTS, as the worker process sees it, says what
happens there (the pattern of etcd's gofail and TiKV's fail-rs):

    PIPELINE_FAILPOINTS="label=pause:/tmp/gate"

`pause:FILE` holds the calling thread for as long as FILE exists, after writing
`FILE.paused.PID` so the test knows which process is held; removing FILE releases it.
Unset (every user's run), `hit` returns at once. Places: "label", before each batch goes
through the model (pipeline.job.model_handler).
"""

from __future__ import annotations

import logging
import os
import time

ENV = "PIPELINE_FAILPOINTS"
POLL_S = 0.1
# A held worker carries on after this long even if its gate is still there, so a test
# that died without removing its gate cannot hold a job forever.
MAX_PAUSE_S = 1800.0

log = logging.getLogger(__name__)


def actions(spec: str) -> dict[str, str]:
    """`NAME=ACTION;NAME=ACTION` -> {NAME: ACTION}; entries without `=` are ignored."""
    found = {}
    for entry in spec.split(";"):
        name, sep, action = entry.partition("=")
        if sep and name.strip():
            found[name.strip()] = action.strip()
    return found


def hit(name: str, *, environ=os.environ) -> None:
    """Does what PIPELINE_FAILPOINTS says for the failpoint `name` (nothing when unset)."""
    spec = environ.get(ENV)
    if not spec:
        return
    action = actions(spec).get(name)
    if action is None:
        return
    kind, _, argument = action.partition(":")
    if kind == "pause" and argument:
        _pause(name, argument)
    else:
        log.warning("failpoint %s: unknown action %r ignored", name, action)


def _pause(name: str, gate: str) -> None:
    if not os.path.exists(gate):
        return
    marker = f"{gate}.paused.{os.getpid()}"
    # Written whole, then renamed into place: whoever sees the marker sees its content.
    with open(f"{gate}.writing.{os.getpid()}", "w") as file:
        file.write(name)
    os.replace(file.name, marker)
    log.info("failpoint %s: held while %s exists", name, gate)
    deadline = time.monotonic() + MAX_PAUSE_S
    while os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(POLL_S)
