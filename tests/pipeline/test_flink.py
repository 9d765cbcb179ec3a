"""The labelling job on a real Apache Flink cluster on 127.0.0.1, as scripts/flink_local.sh starts it.

One cluster for the module (a JobManager and two TaskManagers, each its own JVM with one
slot), always stopped at the end, no JVM or SDK harness left behind. The job runs as a
user runs it, `python -m pipeline.run --config configs/flink.yaml ...`: the launcher starts
Beam's Flink job server (built by scripts/flink_setup.sh), which submits to the cluster;
each TaskManager starts its own SDK harness (scripts/flink_sdk_worker.sh). Checked: rows
equal to the DirectRunner's, the summary's counts, work on both TaskManagers, one harness
and one model per TaskManager, --resume after a cancel, and a TaskManager SIGKILLed while
labelling. Figures are printed (pytest -s) and quoted in docs/flink.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import zipfile

import apache_beam as beam
import numpy as np
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipeline.contract import image_id
from tests.conftest import REPO
from tests.corpus import build_corpus
from tests.pipeline.flink import (
    MODEL_READY,
    HarnessSampler,
    alive,
    children,
    job_server_jar,
    new_cluster,
    wait_until,
)
from tests.pipeline.jobs import run_job

TASKMANAGERS = 2
TM_MEMORY = 1536 * 2**20  # scripts/flink_local.sh's default FLINK_TM_MEMORY, 1536m
WIDTHS = (96, 128, 160, 192, 256, 320)  # each sample photo at these widths: the good inputs
MORE_WIDTHS = (112, 144)  # the inputs the --resume test adds
BAD = ("empty.jpg", "text.jpg", "half.jpg", "bad_crc.png", "image.ppm")  # from tests/corpus.py
# 6 sample photos x 6 widths + 5 bad files; every bad one fails at decode.
SUMMARY = "summary: 41 inputs, 36 labelled, 5 failed (read 0, decode 5, inference 0)"
LAUNCH_TIMEOUT_S = 600

pytestmark = pytest.mark.flink


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = new_cluster(tmp_path_factory.mktemp("flink"))
    # The TaskManagers, and so the harnesses they start, run the Python running this test.
    os.environ["BEAM_SDK_PYTHON"] = sys.executable
    started = cluster.script("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        cluster.script("stop")
        for pid in cluster.jvms() + cluster.harnesses():  # only if stop failed: leave nothing behind
            os.kill(pid, signal.SIGKILL)
        os.environ.pop("BEAM_SDK_PYTHON", None)


@pytest.fixture(scope="module")
def jar():
    return job_server_jar()


def write_photos(folder, sample_photos, widths) -> None:
    for photo in sample_photos:
        image = Image.open(photo).convert("RGB")
        for width in widths:
            image.resize((width, image.height * width // image.width)).save(
                folder / f"{photo.stem}_{width}.jpg", quality=90
            )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_photos):
    """41 inputs: the sample photos at six widths, and five broken files from the corpus."""
    folder = tmp_path_factory.mktemp("flink-inputs")
    write_photos(folder, sample_photos, WIDTHS)
    corpus = build_corpus(large=False)
    for name in BAD:
        (folder / name).write_bytes(corpus[name][0])
    assert len(list(folder.iterdir())) == 41
    return folder


@pytest.fixture(scope="module")
def direct(inputs, npz_path, tmp_path_factory):
    """The same inputs through the DirectRunner: its output folder."""
    out = tmp_path_factory.mktemp("flink-direct")
    done = run_job(
        "--input", f"{inputs}/*", "--output", out, "--weights", npz_path, "--embeddings", "--batch_size", "4"
    )
    assert SUMMARY in done.stdout
    return out


def flink_args(cluster, jar, folders, out, npz_path, *more) -> list[str]:
    """pipeline.run's arguments for this cluster: configs/flink.yaml plus its address and the test's files."""
    return [
        "--config", "configs/flink.yaml",
        f"--flink_master=127.0.0.1:{cluster.rest_port}",
        f"--flink_job_server_jar={jar}",
        *[arg for folder in folders for arg in ("--input", f"{folder}/*")],
        "--output", str(out), "--weights", npz_path,
        "--batch_size", "4",
        "--max_error_fraction", "1",  # an eighth of the inputs are broken on purpose
        *more,
    ]  # fmt: skip


@contextlib.contextmanager
def launched(args, log=None):
    """`python -m pipeline.run ARGS` running; killed with its job server if still running at the end.

    Its stdout and stderr are pipes, or both go to `log` (an open file).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=REPO,
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the job-server JVM it starts goes with it
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.fixture(scope="module")
def flink_run(cluster, jar, inputs, npz_path, tmp_path_factory):
    """One run of the job on the cluster: (output, launcher stdout, Flink job id, HarnessSampler, wall s)."""
    out = tmp_path_factory.mktemp("flink-out")
    known = cluster.job_ids()
    began = time.monotonic()
    with HarnessSampler(cluster.daemon_pids("taskexecutor")) as sampler:
        done = run_job(*flink_args(cluster, jar, [inputs], out, npz_path))
    wall = time.monotonic() - began
    (job_id,) = cluster.job_ids() - known
    return out, done.stdout, job_id, sampler, wall


def rows(read_rows, out, table):
    found, files = read_rows(out, table)
    return sorted(found, key=lambda row: row["image_id"]), files


def assert_rows_equal(ours, theirs):
    assert [r["image_id"] for r in ours] == [r["image_id"] for r in theirs]
    for mine, direct in zip(ours, theirs):
        assert (mine["uri"], mine["width"], mine["height"]) == (
            direct["uri"],
            direct["width"],
            direct["height"],
        )
        assert [x["class_index"] for x in mine["labels"]] == [x["class_index"] for x in direct["labels"]]
        # Same TensorFlow on the same CPU; batches may be cut differently, hence a tolerance.
        np.testing.assert_allclose(
            [x["score"] for x in mine["labels"]], [x["score"] for x in direct["labels"]], rtol=1e-4
        )
        np.testing.assert_allclose(mine["fc7"], direct["fc7"], rtol=1e-3, atol=1e-3)


def labelling(cluster, job_id, launcher) -> dict | None:
    """A labelling subtask whose harness holds a batch at the gate; fails once the launcher has exited."""
    assert launcher.poll() is None, f"the launcher exited with {launcher.returncode} before labelling"
    return cluster.held_label_subtask(job_id)


def expected_ids(*folders) -> list[str]:
    return sorted(image_id(str(path)) for folder in folders for path in folder.iterdir())


def test_start_gives_a_jobmanager_and_two_taskmanager_jvms_with_one_slot_each(cluster):
    overview = cluster.rest("/overview")
    assert (overview["taskmanagers"], overview["slots-total"]) == (TASKMANAGERS, TASKMANAGERS)
    assert overview["flink-version"] == "1.19.3"  # scripts/flink_setup.sh's FLINK_VERSION
    taskmanagers = cluster.rest("/taskmanagers")["taskmanagers"]
    assert [tm["slotsNumber"] for tm in taskmanagers] == [1, 1]
    for tm in taskmanagers:
        details = cluster.rest(f"/taskmanagers/{tm['id']}")
        assert details["memoryConfiguration"]["totalProcessMemory"] == TM_MEMORY
    # Three separate JVMs, and no other process runs from the cluster's folder.
    (jobmanager,) = cluster.daemon_pids("standalonesession")
    workers = cluster.daemon_pids("taskexecutor")
    assert len(workers) == TASKMANAGERS
    assert sorted(cluster.jvms()) == sorted([jobmanager, *workers])
    status = cluster.script("status")
    assert status.returncode == 0 and '"taskmanagers": 2' in status.stdout


def test_config_sets_a_restart_strategy_and_fast_heartbeats(cluster):
    config = {item["key"]: item["value"] for item in cluster.rest("/jobmanager/config")}
    assert config["restart-strategy.type"] == "fixed-delay"
    assert config["restart-strategy.fixed-delay.attempts"] == "3"
    # A killed TaskManager is declared dead within 10 s instead of Flink's default 50 s.
    assert config["heartbeat.timeout"] == "10000"
    assert (config["rest.address"], config["rest.port"]) == ("127.0.0.1", str(cluster.rest_port))


def test_flink_setup_builds_the_job_server_of_this_venvs_beam(jar):
    # The job server must be the launcher's Beam release (2.62.0 in .venv-flink, pinned by
    # scripts/constraints-flink.txt); configs/flink.yaml names none (the launcher would fetch
    # Beam's own), so the tests give this one with --flink_job_server_jar.
    assert "flink_job_server_jar" not in yaml.safe_load((REPO / "configs" / "flink.yaml").read_text())
    assert jar.name == f"beam-runners-flink-1.19-job-server-{beam.__version__}.jar"
    # Beam's FlinkRunner runs `java -jar JAR`: the manifest names the driver and the lib/ jars.
    with zipfile.ZipFile(jar) as archive:
        manifest = archive.read("META-INF/MANIFEST.MF").decode().replace("\r\n", "\n").replace("\n ", "")
    assert "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver" in manifest
    class_path = re.search(r"Class-Path: (.*)", manifest).group(1).split()
    assert f"lib/beam-runners-flink-1.19-{beam.__version__}.jar" in class_path
    assert all((jar.parent / path).is_file() for path in class_path)


def test_the_launcher_knows_the_flink_job_servers_own_options(jar):
    # Beam's portable runner adds the options the job server describes to its parser only
    # when it submits a job; the launcher checks flags first and keeps its own copy of the
    # Flink runner's (options.FLINK_JOB_SERVER_OPTIONS), which must be what this job server
    # describes. (It describes the Java SDK's own options too: those are not the launcher's.)
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc
    from apache_beam.utils import subprocess_server

    from pipeline.job.options import FLINK_JOB_SERVER_OPTIONS, FlagTable

    (port,) = subprocess_server.pick_port(None)
    ports = ["--job-port", str(port), "--artifact-port", "0", "--expansion-port", "0"]
    command = ["java", "-jar", str(jar), *ports]
    server = subprocess_server.SubprocessServer(beam_job_api_pb2_grpc.JobServiceStub, command, port=port)
    try:
        described = server.start().DescribePipelineOptions(
            beam_job_api_pb2.DescribePipelineOptionsRequest(), timeout=60
        )
    finally:
        server.stop()
    beams = FlagTable({str(cls): cls for cls in PipelineOptions.__subclasses__()}.values()).spellings()
    kind = beam_job_api_pb2.PipelineOptionType.Enum.Name
    found = {
        (option.name, kind(option.type), option.default_value)
        for option in described.options
        if option.group.startswith("org.apache.beam.runners.flink.") and f"--{option.name}" not in beams
    }
    assert found == set(FLINK_JOB_SERVER_OPTIONS)


def test_flink_writes_what_the_direct_runner_writes(flink_run, direct, inputs, read_rows):
    out, _, _, _, _ = flink_run
    flink_predictions, _ = rows(read_rows, out, "predictions")
    direct_predictions, _ = rows(read_rows, direct, "predictions")
    assert_rows_equal(flink_predictions, direct_predictions)
    flink_errors, _ = rows(read_rows, out, "errors")
    assert flink_errors == rows(read_rows, direct, "errors")[0]
    # Every input exactly once, in one table or the other.
    ids = [r["image_id"] for r in flink_predictions + flink_errors]
    assert sorted(ids) == expected_ids(inputs)
    corpus = build_corpus(large=False)
    assert sorted((os.path.basename(e["uri"]), e["stage"], e["error_type"]) for e in flink_errors) == sorted(
        (name, corpus[name][1].stage, corpus[name][1].error_type) for name in BAD
    )


def test_the_summary_counts_come_back_from_flink(flink_run):
    _, stdout, _, _, wall = flink_run
    # The counters are Flink accumulators of the finished job (Beam's Flink runner reports
    # them as "attempted"; pipeline.job.summary falls back to those).
    assert SUMMARY in stdout
    print(f"\nflink run: {stdout.strip().splitlines()[-1]}; launcher wall {wall:.1f} s")


def test_both_taskmanagers_labelled(flink_run, cluster):
    _, _, job_id, _, _ = flink_run
    label = cluster.vertex(job_id, "Label")
    subtasks = label["subtasks"]
    # The labelling stage ran as two subtasks, one on each TaskManager, and each got inputs.
    assert sorted(s["taskmanager-id"] for s in subtasks) == sorted(
        tm["id"] for tm in cluster.rest("/taskmanagers")["taskmanagers"]
    )
    assert all(s["status"] == "FINISHED" and s["metrics"]["read-records"] > 0 for s in subtasks)
    assert sum(s["metrics"]["read-records"] for s in subtasks) == 41


def test_one_harness_and_one_model_per_taskmanager(flink_run, cluster):
    _, _, _, sampler, _ = flink_run
    # Each TaskManager JVM had at most one SDK harness child at any time (one slot,
    # sdk_worker_parallelism 1), and the model was loaded once in each.
    assert sampler.most_at_once == dict.fromkeys(sampler.taskmanagers, 1)
    assert sorted(cluster.count_in_logs(MODEL_READY).values()) == [1, 1]
    gib = 2**30
    print(
        "\nper TaskManager: harnesses started one after another over the job "
        f"{[cluster.harness_logs().get(tm, 0) for tm in sampler.taskmanagers]}, at most 1 at a time; "
        "peak RSS "
        f"TaskManager JVMs {[round(sampler.jvm_rss[tm] / gib, 2) for tm in sampler.taskmanagers]} GiB, "
        f"harness with the model {round(max(sampler.harness_rss.values()) / gib, 2)} GiB"
    )


def test_resume_after_a_cancel_labels_the_rest_once(
    flink_run, cluster, jar, inputs, npz_path, tmp_path, read_rows, sample_photos
):
    first, _, _, _, _ = flink_run
    more = tmp_path / "more"  # 12 new photos beside the first run's 41 inputs
    more.mkdir()
    write_photos(more, sample_photos, MORE_WIDTHS)
    out = tmp_path / "out"
    shutil.copytree(first, out)
    before = sorted(path.name for path in out.iterdir())
    args = flink_args(cluster, jar, [inputs, more], out, npz_path, "--resume")

    # Every harness from here on is this job's; its labelling holds its first batch before
    # the model until the gate goes, so the cancel lands mid-labelling however fast the machine.
    cluster.wait_for_no_harness()
    known = cluster.job_ids()
    with cluster.labelling_held(), launched(args) as launcher:
        job_id = cluster.new_job(known, launcher, timeout_s=LAUNCH_TIMEOUT_S)
        wait_until(lambda: labelling(cluster, job_id, launcher), LAUNCH_TIMEOUT_S, "labelling never began")
        cluster.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
        cluster.gate.unlink()  # a held bundle would keep its task from cancelling
        job = cluster.wait_for_job(job_id, {"CANCELED", "FINISHED", "FAILED"}, timeout_s=LAUNCH_TIMEOUT_S)
        assert job["state"] == "CANCELED"
        launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert launcher.returncode != 0
    # Cancelled before its shards were finalized: the output holds the first run's shards only.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("beam-temp-")) == before

    done = run_job(*args)
    # 41 inputs already in the output are skipped; the 12 new photos are labelled.
    assert (
        "summary: 12 inputs, 12 labelled, 0 failed (read 0, decode 0, inference 0), 41 skipped" in done.stdout
    )
    predictions, _ = rows(read_rows, out, "predictions")
    errors, _ = rows(read_rows, out, "errors")
    ids = [r["image_id"] for r in predictions + errors]
    assert sorted(ids) == expected_ids(inputs, more)  # each of the 53 inputs exactly once


def test_labelling_survives_a_killed_taskmanager(cluster, jar, inputs, npz_path, direct, tmp_path, read_rows):
    out = tmp_path / "out"
    # Every harness from here on is this job's; each holds its first batch before the model
    # until the gate goes, so the kill lands mid-labelling however fast or slow the machine.
    cluster.wait_for_no_harness()
    known = cluster.job_ids()
    began = time.monotonic()
    with cluster.labelling_held(), launched(flink_args(cluster, jar, [inputs], out, npz_path)) as launcher:
        job_id = cluster.new_job(known, launcher, timeout_s=LAUNCH_TIMEOUT_S)
        victim = wait_until(
            lambda: labelling(cluster, job_id, launcher), LAUNCH_TIMEOUT_S, "labelling never began"
        )
        pid = cluster.taskmanager_pid(victim["taskmanager-id"])
        harnesses = children(pid)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        cluster.gate.unlink()  # the other TaskManager labels on; the restarted attempt is not held
        # A standalone cluster does not replace a dead TaskManager; a cluster manager would.
        added = cluster.script("add-taskmanager")
        assert added.returncode == 0, added.stderr
        replaced_s = time.monotonic() - killed_at

        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
        wall = time.monotonic() - began
        assert launcher.returncode == 0, stderr[-4000:]
    job = cluster.rest(f"/jobs/{job_id}")
    assert job["state"] == "FINISHED"
    # The counters count each input once: Flink keeps only the successful attempts' accumulators.
    assert SUMMARY in stdout
    # The lost TaskManager failed tasks (each failure restarts its region), and the killed
    # TaskManager's labelling subtask ran again, as a new attempt.
    failures = cluster.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert failures
    relabelled = cluster.vertex(job_id, "Label")["subtasks"][victim["subtask"]]
    assert relabelled["attempt"] >= 1 and relabelled["status"] == "FINISHED"
    # Its harness, orphaned, ends by itself once its control connection is gone.
    wait_until(
        lambda: not [child for child in harnesses if alive(child)],
        LAUNCH_TIMEOUT_S,
        "an orphaned harness lives on",
    )

    predictions, _ = rows(read_rows, out, "predictions")
    errors, _ = rows(read_rows, out, "errors")
    assert sorted(r["image_id"] for r in predictions + errors) == expected_ids(inputs)
    assert_rows_equal(predictions, rows(read_rows, direct, "predictions")[0])
    kinds = ", ".join(sorted({failure["exceptionName"].rsplit(".", 1)[-1] for failure in failures}))
    print(
        f"\nflink fault run: 41 inputs, 1 TaskManager SIGKILLed while labelling, {len(failures)} "
        f"failure(s) recovered ({kinds}), "
        f"labelling subtask at attempt {relabelled['attempt']}; replacement registered {replaced_s:.1f} s "
        f"after the kill; job wall "
        f"{job['duration'] / 1000:.1f} s, launcher wall {wall:.1f} s; rows: {len(predictions)} predictions + "
        f"{len(errors)} errors, each input once"
    )


# --watch on the cluster: polls every 2 s, windows of 5 s, a checkpoint every 2 s.
WATCH = ("--watch", "--poll_interval_s", "2", "--window_s", "5", "--checkpointing_interval=2000")
# What a batch may take beyond a poll and a window to be committed: the labelling itself,
# and the job's start (harnesses, models) for the first, on a slow and busy machine.
LABELLING_BUDGET_S = 300


def drop(folder, staging, sample_photos, widths, bad: int = 0) -> tuple[list[str], float]:
    """Photos (and `bad` broken files) renamed into the watched folder: their image_ids, when they landed."""
    staging.mkdir(exist_ok=True)
    write_photos(staging, sample_photos, widths)
    for n in range(bad):
        (staging / f"broken_{widths[0]}_{n}.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    landed = time.time()
    moved = []
    for path in sorted(staging.iterdir()):
        os.rename(path, folder / path.name)
        moved.append(image_id(str(folder / path.name)))
    return moved, landed


def committed_ids(read_rows, out) -> list[str]:
    """Every image_id of both committed tables, duplicates kept."""
    if not (out / "predictions").exists():
        return []
    return [row["image_id"] for table in ("predictions", "errors") for row in read_rows(out, table)[0]]


def wait_committed(read_rows, out, ids, launcher, what) -> float:
    """Waits until every id of `ids` is committed; the time then."""

    def done():
        assert launcher.poll() is None, f"the launcher exited with {launcher.returncode}"
        return set(ids) <= set(committed_ids(read_rows, out))

    wait_until(done, 2 + 5 + LABELLING_BUDGET_S, what, every_s=1)
    return time.time()


@contextlib.contextmanager
def watching(args, log_path):
    """A --watch launcher running, its output to log_path; killed with its group if running at the end."""
    with open(log_path, "w") as log, launched(args, log) as process:
        yield process


def drained(launcher, log_path) -> str:
    """SIGTERM to a --watch launcher; its whole log once it has drained and exited 0."""
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=LAUNCH_TIMEOUT_S)
    log = log_path.read_text()
    assert launcher.returncode == 0, log[-4000:]
    assert "drained: every window up to" in log, log[-4000:]
    return log


def test_watch_labels_each_batch_once_through_a_killed_taskmanager_and_a_restart(
    cluster, jar, npz_path, sample_photos, tmp_path, read_rows
):
    folder, out = tmp_path / "landing", tmp_path / "out"
    folder.mkdir()
    args = flink_args(cluster, jar, [folder], out, npz_path, *WATCH)
    # After the fault test's job, its TaskManagers keep the harnesses of the restarted tasks
    # (Beam's Flink runner, seen for over 5 minutes after the job FINISHED). They hold no
    # batch, so the gate's markers never name them; the relaunch below waits for the others.
    earlier = frozenset(cluster.harnesses())
    known = cluster.job_ids()
    lags = []
    with watching(args, tmp_path / "first.log") as launcher:
        job_id = cluster.new_job(known, launcher, timeout_s=LAUNCH_TIMEOUT_S)
        cluster.wait_for_job(job_id, {"RUNNING"}, timeout_s=LAUNCH_TIMEOUT_S)

        # 1: photos and a broken file land on an empty folder.
        first, landed = drop(folder, tmp_path / "s1", sample_photos, (100,), bad=1)
        lags.append(wait_committed(read_rows, out, first, launcher, "batch 1 not committed") - landed)

        # 2: a TaskManager dies while its harness holds a batch of it at the model.
        with cluster.labelling_held():
            second, landed = drop(folder, tmp_path / "s2", sample_photos, (110,), bad=1)
            victim = wait_until(lambda: labelling(cluster, job_id, launcher), LAUNCH_TIMEOUT_S,
                                "batch 2 never reached the model")  # fmt: skip
            os.kill(cluster.taskmanager_pid(victim["taskmanager-id"]), signal.SIGKILL)
        added = cluster.script("add-taskmanager")
        assert added.returncode == 0, added.stderr
        wait_committed(read_rows, out, second, launcher, "batch 2 not committed after the TaskManager died")
        failures = cluster.rest(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        assert failures  # the job lost a TaskManager, restarted from its checkpoint, and went on
        assert cluster.rest(f"/jobs/{job_id}")["state"] == "RUNNING"

        # 3: more land after the recovery.
        third, landed = drop(folder, tmp_path / "s3", sample_photos, (120,), bad=1)
        lags.append(wait_committed(read_rows, out, third, launcher, "batch 3 not committed") - landed)
        log = drained(launcher, tmp_path / "first.log")
    # The launcher cancelled the cluster's job, not only Beam's job server's invocation.
    ended = cluster.wait_for_job(job_id, {"CANCELED", "FAILED", "FINISHED"}, LAUNCH_TIMEOUT_S)
    assert ended["state"] == "CANCELED"
    before = first + second + third
    assert sorted(committed_ids(read_rows, out)) == sorted(before)  # each once
    n = len(sample_photos)
    assert f"summary: {3 * n + 3} inputs, {3 * n} labelled, 3 failed (read 0, decode 3, inference 0)" in log

    # 4: files land while no job runs; a second launch labels them, and nothing twice.
    fourth, landed = drop(folder, tmp_path / "s4", sample_photos, (130,), bad=0)
    known = cluster.job_ids()
    cluster.wait_for_no_harness(besides=earlier)  # the cancelled job's harnesses are gone
    with watching(args, tmp_path / "second.log") as launcher:
        cluster.new_job(known, launcher, timeout_s=LAUNCH_TIMEOUT_S)
        wait_committed(read_rows, out, fourth, launcher, "batch 4 not committed by the second launch")
        log = drained(launcher, tmp_path / "second.log")
    assert sorted(committed_ids(read_rows, out)) == sorted(before + fourth)
    assert f"summary: {n} inputs, {n} labelled, 0 failed" in log
    print(
        f"\nflink --watch: batches of {n + 1} files, committed {lags[0]:.1f} s (batch 1, with the job's "
        f"start) and {lags[1]:.1f} s (batch 3) after landing; a TaskManager SIGKILLed mid-batch, "
        f"{len(failures)} failure(s) recovered; {len(before + fourth)} inputs over two launches, each once"
    )


def test_stop_leaves_no_process_behind(cluster):
    stopped = cluster.script("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert cluster.jvms() == []
    assert cluster.harnesses() == []
    with pytest.raises(urllib.error.URLError):
        cluster.rest("/overview", retry_s=0)
    status = cluster.script("status")
    assert status.returncode == 3 and "not running" in status.stdout
