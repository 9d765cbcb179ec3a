"""A real S3 round trip against a local S3-compatible server (moto, on 127.0.0.1 only).

Photos go into a bucket, `python -m pipeline.run --input 's3://…' --output s3://…` labels
them, and the Parquet comes back out of the bucket. Credentials reach the job only through
the environment, and must not show up in its output, logs, Parquet metadata or the
pipeline's display data. As a safety net the environment also points boto3's default S3
endpoint at a closed local port, so a client that ignored --s3_endpoint_url would fail
here instead of talking to anything off this machine.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys

import boto3  # test extras: a missing one must fail here, not skip the round trip
import pyarrow.parquet as pq
import pytest

from pipeline.contract import image_id
from pipeline.table import snapshot
from tests.conftest import REPO, SAMPLES
from tests.pipeline.jobs import run_job
from tests.pipeline.servers import free_port, start_service, stop_service, wait_listening

pytestmark = pytest.mark.slow

BUCKET = "photos"
PHOTOS = ("coffee.jpg", "chelsea.png", "rocket.jpg")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, its endpoint, credentials and a client; stopped afterwards.

    In a process of its own: deltalake's client (the output's tables) waits for replies
    without releasing the GIL, so a server thread in this process could never answer it.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = start_service(command, log, REPO)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port, timeout_s=30, what="moto's S3 server")
    except BaseException:  # pytest.fail raises an OutcomeException, not an Exception
        stop_service(server)
        raise
    # Fresh random credentials: any occurrence of them in an output is a leak.
    creds = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    env = {
        **os.environ,
        **creds,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # The safety net: without --s3_endpoint_url boto3 would use this closed local port.
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)
    for name in PHOTOS:
        client.put_object(Bucket=BUCKET, Key=f"imgs/{name}", Body=(SAMPLES / name).read_bytes())
    client.put_object(Bucket=BUCKET, Key="imgs/notes.jpg", Body=b"<html>not a photo</html>")
    try:
        yield {"endpoint": endpoint, "env": env, "creds": creds, "client": client}
    finally:
        stop_service(server)


def objects(client, prefix):
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


@pytest.fixture(scope="module")
def s3_run(s3, npz_path):
    done = run_job(
        "--input",
        f"s3://{BUCKET}/imgs/*",
        "--output",
        f"s3://{BUCKET}/out",
        "--weights",
        npz_path,
        "--s3_endpoint_url",
        s3["endpoint"],
        "--decode_isolation",
        "none",
        env=s3["env"],
    )
    return done


def delta_options(s3) -> dict[str, str]:
    """deltalake's options for the test server (the test process has no AWS_* of its own)."""
    return {
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_ENDPOINT_URL_S3": s3["endpoint"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        **s3["creds"],
    }


def table_rows(s3, output: str, table: str) -> list[dict]:
    """The rows of a table's committed version in the bucket, read back through boto3."""
    found = snapshot(output, delta_options(s3))
    stored = objects(s3["client"], output.removeprefix(f"s3://{BUCKET}/") + "/")
    keys = [uri.removeprefix(f"s3://{BUCKET}/") for uri in found.files(table)]
    return [row for key in keys for row in pq.read_table(io.BytesIO(stored[key])).to_pylist()]


def test_round_trip_through_the_bucket(s3, s3_run):
    stored = objects(s3["client"], "out/")
    parquet = sorted(key.rsplit("-", 4)[0] for key in stored if key.endswith(".parquet"))
    assert parquet == ["out/errors/part-r00001", "out/predictions/part-r00001"]
    assert any(key.startswith("out/predictions/_delta_log/") for key in stored)
    predictions = table_rows(s3, f"s3://{BUCKET}/out", "predictions")
    errors = table_rows(s3, f"s3://{BUCKET}/out", "errors")
    uris = {f"s3://{BUCKET}/imgs/{name}" for name in PHOTOS}
    assert {r["uri"] for r in predictions} == uris
    assert all(r["image_id"] == image_id(r["uri"]) for r in predictions)
    assert {(r["uri"], r["stage"], r["error_type"]) for r in errors} == {
        (f"s3://{BUCKET}/imgs/notes.jpg", "decode", "not_an_image")
    }
    sizes = {r["uri"].rsplit("/", 1)[1]: (r["width"], r["height"]) for r in predictions}
    assert sizes == {"coffee.jpg": (600, 400), "chelsea.png": (451, 300), "rocket.jpg": (640, 427)}
    assert "summary: 4 inputs, 3 labelled, 1 failed (read 0, decode 1, inference 0)" in s3_run.stdout


def test_credentials_leak_nowhere(s3, s3_run, npz_path):
    secret, key_id = s3["creds"]["AWS_SECRET_ACCESS_KEY"], s3["creds"]["AWS_ACCESS_KEY_ID"]
    for text in (s3_run.stdout, s3_run.stderr):
        assert secret not in text and key_id not in text
    for key, data in objects(s3["client"], "out/").items():
        assert secret.encode() not in data and key_id.encode() not in data, key
        if not key.endswith(".parquet"):
            continue  # the tables' logs: checked above as bytes
        metadata = pq.read_metadata(io.BytesIO(data)).metadata or {}
        assert not any(secret.encode() in v or key_id.encode() in v for v in metadata.values())
    # Display data and the pipeline proto, as a runner would receive them, built from
    # the same command line in this process with the same environment.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "import apache_beam as beam\n"
            "from apache_beam.options.pipeline_options import PipelineOptions\n"
            "from apache_beam.transforms.display import DisplayData\n"
            "from pipeline import run\n"
            "from pipeline.job.options import parse_args\n"
            "args, beam_args = parse_args(sys.argv[1:])\n"
            "options = PipelineOptions(beam_args)\n"
            "p = beam.Pipeline(options=options)\n"
            "run.build_pipeline(p, args, run.check_launch(args))\n"
            "sys.stdout.buffer.write(p.to_runner_api().SerializeToString())\n"
            "sys.stdout.buffer.write(repr(DisplayData.create_from_options(options).items).encode())\n"
            "sys.stdout.buffer.write(repr(options.display_data()).encode())\n",
            *("--input", f"s3://{BUCKET}/imgs/*", "--output", f"s3://{BUCKET}/display"),
            *("--weights", npz_path, "--s3_endpoint_url", s3["endpoint"]),
        ],
        cwd=REPO,
        env=s3["env"],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert s3["endpoint"].encode() in done.stdout  # the options are in there ...
    assert secret.encode() not in done.stdout and key_id.encode() not in done.stdout  # ... no credentials


def test_read_errors_on_s3(s3):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.storage import ReadError, read_bytes, stage_weights

    client = s3["client"]
    creds = s3["creds"]
    FileSystems.set_options(
        PipelineOptions(
            [
                f"--s3_endpoint_url={s3['endpoint']}",
                "--s3_region_name=us-east-1",
                f"--s3_access_key_id={creds['AWS_ACCESS_KEY_ID']}",
                f"--s3_secret_access_key={creds['AWS_SECRET_ACCESS_KEY']}",
            ]
        )
    )
    try:
        # Deleted between matching and reading: a not_found errors row, not a retry loop.
        client.put_object(Bucket=BUCKET, Key="race/gone.jpg", Body=b"x")
        (match,) = FileSystems.match([f"s3://{BUCKET}/race/*"])
        (found,) = match.metadata_list
        client.delete_object(Bucket=BUCKET, Key="race/gone.jpg")
        slept = []
        with pytest.raises(ReadError) as info:
            read_bytes(found.path, sleep=slept.append)
        assert (info.value.error_type, slept) == ("not_found", [])
        # Weights may live in the bucket too: staged to a local file once per process.
        client.put_object(Bucket=BUCKET, Key="weights/w.npz", Body=b"PK\x03\x04 weights")
        local = stage_weights(f"s3://{BUCKET}/weights/w.npz")
        assert open(local, "rb").read() == b"PK\x03\x04 weights"
    finally:
        FileSystems.set_options(None)


def test_credential_flags_are_warned_about_without_their_values(caplog):
    from pipeline.job.options import _warn_about_secret_flags

    _warn_about_secret_flags(["--s3_secret_access_key=hunter2", "--s3_endpoint_url=http://x"])
    assert "--s3_secret_access_key was given on the command line" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("point", ["commit.between=kill", "cleanup=kill"])
def test_a_killed_run_leaves_the_buckets_last_commit_and_resume_completes_it(s3, npz_path, point):
    # The crash tests' protocol (tests/pipeline/test_crash.py) on the object store: a run
    # killed between its two commits, or in its cleanup, then a --resume.
    output = f"s3://{BUCKET}/crash-{point.split('=')[0]}"

    def run(*extra, failpoint=None):
        env = {**s3["env"], **({"PIPELINE_FAILPOINTS": failpoint} if failpoint else {})}
        argv = ["--input", f"s3://{BUCKET}/imgs/*", "--output", output, "--weights", npz_path]
        process = subprocess.run(
            [sys.executable, "-m", "tests.pipeline.crash_job", *argv, "--s3_endpoint_url", s3["endpoint"]]
            + list(extra),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            start_new_session=True,
        )
        return process

    def names(table):
        return sorted(row["uri"].rsplit("/", 1)[1] for row in table_rows(s3, output, table))

    assert run().returncode == 0
    before = (names("predictions"), names("errors"))
    assert before == (sorted(PHOTOS), ["notes.jpg"])
    killed = run(failpoint=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (names("predictions"), names("errors")) == before  # the same rows, each once
    done = run("--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (names("predictions"), names("errors")) == before
    # Nothing is left in the bucket that no table references.
    found = snapshot(output, delta_options(s3))
    referenced = {uri.removeprefix(f"s3://{BUCKET}/") for table in found.tables for uri in found.files(table)}
    stored = objects(s3["client"], output.removeprefix(f"s3://{BUCKET}/") + "/")
    assert sorted(key for key in stored if key.endswith(".parquet")) == sorted(referenced)
