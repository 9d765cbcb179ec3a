"""Failpoints: named places in the job where a test can hold or kill it, set through the environment.

A test that must act while the job is at a known step (kill a Flink TaskManager while
it labels, cancel a job before it can finish) cannot learn that from the clock: a slow or
busy machine moves every step. Instead the job calls `hit(NAME)` at a few places, and
the environment variable PIPELINE_FAILPOINTS, as the worker process sees it, says what
happens there (the pattern of etcd's gofail and TiKV's fail-rs):

    PIPELINE_FAILPOINTS="label=pause:/tmp/gate"

`pause:FILE` holds the calling thread for as long as FILE exists, after writing
`FILE.paused.PID` so the test knows which process is held; removing FILE releases it.
`kill` (or `kill:N`, at the Nth hit in this process) sends SIGKILL to the caller's whole
process group at once, as a machine that dies does: a test runs the job in a process
group of its own (start_new_session) and then checks what the kill left behind.
Unset (every user's run), `hit` returns at once.

Places, in the order of a run's life:
  "launched"        the launcher, once the previous run is completed and the output tidied,
                    before anything of this run is written (pipeline.run)
  "listed"          after the inputs are listed, before any is read (pipeline.job.read)
  "label"           before each batch goes through the model (pipeline.job.model_handler)
  "commit"          every data file written, nothing committed (pipeline.job.write.commit_run)
  "commit.between"  the errors table committed, the predictions table not yet
  "committed"       both tables committed, before cleanup
  "cleanup"         before each table's unused files are deleted
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time

ENV = "PIPELINE_FAILPOINTS"
POLL_S = 0.1
# A held worker carries on after this long even if its gate is still there, so a test
# that died without removing its gate cannot hold a job forever.
MAX_PAUSE_S = 1800.0

log = logging.getLogger(__name__)
_hits: collections.Counter[str] = collections.Counter()


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
    _hits[name] += 1
    if kind == "pause" and argument:
        _pause(name, argument)
    elif kind == "kill" and (not argument or (argument.isdigit() and _hits[name] == int(argument))):
        log.warning("failpoint %s: killing process group %d", name, os.getpgrp())
        os.killpg(os.getpgrp(), signal.SIGKILL)
    elif kind != "kill":
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
