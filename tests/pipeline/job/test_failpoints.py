"""pipeline.job.failpoints: nothing when unset, a pause that holds exactly while its gate exists."""

from __future__ import annotations

import logging
import threading

from pipeline.job import failpoints
from tests.pipeline.flink import wait_until


def test_unset_or_another_name_returns_at_once(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    failpoints.hit("label", environ={})
    failpoints.hit("label", environ={failpoints.ENV: f"write=pause:{gate}"})
    assert list(tmp_path.iterdir()) == [gate]  # no marker: nothing was held


def test_spec_lists_several_failpoints():
    assert failpoints.actions(" label=pause:/a ; write=pause:/b;junk;=x") == {
        "label": "pause:/a",
        "write": "pause:/b",
    }


def test_pause_holds_while_the_gate_exists_and_names_the_held_process(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    environ = {failpoints.ENV: f"label=pause:{gate}"}
    thread = threading.Thread(target=failpoints.hit, args=("label",), kwargs={"environ": environ})
    thread.start()
    marker = wait_until(lambda: list(tmp_path.glob("gate.paused.*")), 60, "no marker written")
    (marker,) = marker
    assert marker.read_text() == "label"
    assert int(marker.name.rsplit(".", 1)[1]) > 0  # this process's pid
    thread.join(timeout=0.5)
    assert thread.is_alive()  # still held: the gate is there
    gate.unlink()
    thread.join(timeout=60)
    assert not thread.is_alive()


def test_no_gate_no_hold(tmp_path):
    failpoints.hit("label", environ={failpoints.ENV: f"label=pause:{tmp_path / 'absent'}"})
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_action_is_a_warning_not_a_failure(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.job.failpoints"):
        failpoints.hit("label", environ={failpoints.ENV: "label=explode"})
    assert "unknown action 'explode'" in caplog.text
