"""configs/dataflow_gpu.yaml turned into the job request Beam's DataflowRunner sends, offline.

With --dry_run the runner builds the job (the portable pipeline proto after all of its own
rewrites) and stops before it creates an API client. The test then runs the client's own
create_job_description on that job, which stages files and fills in the environment and
worker pool, with one fake at the network boundary: uploads are kept in memory instead of
going to Cloud Storage. What is left in job.json() is the body of the create-job request.
"""

from __future__ import annotations

import json
import shutil

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

import vgg
from pipeline.job.options import load_config, parse_args, pipeline_options
from pipeline.run import build_pipeline, check_launch
from tests.conftest import REPO, SAMPLES

CONFIG = REPO / "configs" / "dataflow_gpu.yaml"
# What a user puts in place of the YOUR_* placeholders (Beam refuses the upper-case names:
# bucket and project ids are lower case). Inputs, output and weights are local, because the
# launcher checks that they exist and this machine has no Cloud Storage.
FILLED_IN = [
    "--project=my-project",
    "--temp_location=gs://my-bucket/tmp",
    "--staging_location=gs://my-bucket/staging",
]
T4_WITH_DRIVER = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"


class Uploads:
    """Stands in for DataflowApplicationClient.stage_file: keeps each upload's bytes by gs:// path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def __call__(self, gcs_or_local_path, file_name, stream, mime_type=None, total_size=None):
        self.files[f"{gcs_or_local_path}/{file_name}"] = stream.read()


@pytest.fixture(scope="module")
def built(npz_path, tmp_path_factory):
    """(request body as a dict, the staged pipeline proto, uploads) for the GPU config."""
    return build_request(npz_path, tmp_path_factory)


def build_request(npz_path, tmp_path_factory, *more):
    """The request body as a dict, the staged pipeline proto and the uploads, for the config and `more`."""
    photos = tmp_path_factory.mktemp("dataflow-inputs")
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(SAMPLES / name, photos / name)
    argv = [
        "--config", str(CONFIG), *FILLED_IN,
        "--input", f"{photos}/*", "--output", str(tmp_path_factory.mktemp("dataflow-out")),
        "--weights", npz_path,
        "--dry_run=True",  # Beam's TestOptions: build the job, do not create it
        "--no_auth",  # no credentials are looked up
        *more,
    ]  # fmt: skip
    # The same steps as pipeline.run.run(), up to the runner.
    args, beam_args = parse_args(argv)
    options = pipeline_options(args, beam_args)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, args, check_launch(args))
    job = pipeline.run().job

    client = apiclient.DataflowApplicationClient(options)
    uploads = client.stage_file = Uploads()
    client.create_job_description(job)
    request = json.loads(job.json())
    (staged_url,) = [url for url in uploads.files if url.endswith("/pipeline.pb")]
    staged = beam_runner_api_pb2.Pipeline.FromString(uploads.files[staged_url])
    return request, staged, uploads


def test_each_worker_gets_one_t4_and_the_driver(built):
    request, _, _ = built
    # Dataflow's documented spelling; without install-nvidia-driver TensorFlow sees no GPU.
    assert request["environment"]["serviceOptions"] == [T4_WITH_DRIVER]


def test_workers_run_the_projects_container_on_runner_v2(built):
    request, _, _ = built
    (pool,) = request["environment"]["workerPools"]
    image = load_config(str(CONFIG))["sdk_container_image"]
    assert image.endswith(f"/vgg16-beam-gpu:{vgg.__version__}")
    # One environment for every step, and it is the custom image, not Beam's default one.
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    assert pool["workerHarnessContainerImage"] == image
    # use_runner_v2 from the config; the runner adds the portable-job experiments it implies,
    # and use_multiple_sdk_containers (one SDK process per vCPU, hence --share_model).
    assert request["environment"]["experiments"] == [
        "use_runner_v2",
        "beam_fn_api",
        "use_unified_worker",
        "use_portable_job_submission",
        "use_multiple_sdk_containers",
    ]
    assert pool["sdkHarnessContainerImages"][0]["useSingleCorePerContainer"] is True


def test_worker_pool_has_the_machine_type_disk_and_autoscaling_bounds(built):
    request, _, _ = built
    (pool,) = request["environment"]["workerPools"]
    assert pool["machineType"] == "n1-standard-8"  # T4s attach to N1 machines only
    assert pool["diskSizeGb"] == 50  # room to pull and unpack the CUDA image
    assert pool["numWorkers"] == 4
    assert pool["autoscalingSettings"] == {"algorithm": "AUTOSCALING_ALGORITHM_BASIC", "maxNumWorkers": 100}


def _run_inference_handler(staged):
    (transform,) = [
        t
        for t in staged.components.transforms.values()
        if t.spec.urn == "beam:transform:pardo:v1" and t.unique_name.endswith("ParDo(_RunInferenceDoFn)")
    ]
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    wrapper = pickler.loads(payload.do_fn.payload)[0]  # (DoFn, args, kwargs, side inputs, windowing)
    return wrapper._fn._model_handler  # with_exception_handling wraps Beam's _RunInferenceDoFn


@pytest.mark.beam_version  # Beam after 2.62 keeps these in its ModelHandler, 2.62 asks the handler
def test_the_staged_pipeline_shares_one_model_per_vm_in_batches_of_64(built):
    _, staged, _ = built
    handler = _run_inference_handler(staged)
    # share_model: true -> Beam's large_model: one process per VM loads VGG16 and the other
    # SDK processes send it their batches, so the T4 holds one copy, not eight.
    assert (handler.share_model_across_processes(), handler.model_copies()) == (True, 1)
    assert dict(handler.batch_elements_kwargs()) == {"min_batch_size": 8, "max_batch_size": 64}


@pytest.mark.beam_version
def test_model_copies_with_nvidia_mps_reach_the_workers(npz_path, tmp_path_factory):
    # docs/dataflow.md's alternative to one copy per VM: two copies on the T4, shared by the
    # SDK processes, with NVIDIA MPS so that the two processes holding them share the GPU.
    mps = f"{T4_WITH_DRIVER};use_nvidia_mps"
    request, staged, _ = build_request(
        npz_path, tmp_path_factory, "--model_copies=2", f"--dataflow_service_options={mps}"
    )
    assert request["environment"]["serviceOptions"] == [mps]  # the command line's replaces the file's
    handler = _run_inference_handler(staged)
    assert (handler.share_model_across_processes(), handler.model_copies()) == (True, 2)
    assert "no_use_multiple_sdk_containers" not in request["environment"]["experiments"]  # MPS needs them


def test_every_step_of_the_job_is_in_the_staged_pipeline(built):
    request, staged, uploads = built
    transforms = staged.components.transforms
    by_name = {t.unique_name: t for t in transforms.values()}
    (root,) = staged.root_transform_ids

    def children(transform):
        return [transforms[i].unique_name.rsplit("/", 1)[-1] for i in transform.subtransforms]

    # The steps pipeline.run builds, in the order it builds them (ARCHITECTURE.md's flow).
    assert children(transforms[root]) == ["Inputs", "Label", "AllErrors", "Write", "Commit"]
    assert children(by_name["Inputs"]) == ["Match", "Listed", "ReadFiles"]
    # Local patterns are listed by pipeline.storage.expand in one step (no --input_list here).
    assert children(by_name["Inputs/Match"]) == ["Patterns", "Match", "AllInputs", "Dedupe"]
    assert children(by_name["Label"]) == ["Decode", "Infer", "Format", "InferenceErrors", "AllErrors"]
    # Parquet files first, then one step that commits the files both wrote to the two tables.
    assert children(by_name["Write"]) == ["WritePredictions", "WriteErrors"]
    assert children(by_name["Commit"]) == [
        "NamePredictionsFiles",
        "NameErrorsFiles",
        "AllFiles",
        "Together",
        "Commit",
    ]
    # Runner v2 reads the steps from the staged proto (the v1 step list stays empty), and
    # the request points at exactly that upload.
    assert request.get("steps", []) == []
    options = request["environment"]["sdkPipelineOptions"]["options"]
    (staged_url,) = [url for url in uploads.files if url.endswith("/pipeline.pb")]
    assert options["pipelineUrl"] == staged_url
    # Nothing else to install on the workers: no Beam SDK tarball, no setup.py package and no
    # pickled main session, only the launcher's package list that Beam always stages.
    assert sorted(url.rsplit("/", 1)[-1] for url in uploads.files) == [
        "pipeline.pb",
        "submission_environment_dependencies.txt",
    ]
    assert (options["project"], options["region"]) == ("my-project", "us-central1")
    assert options["temp_location"].startswith("gs://my-bucket/tmp/")


def test_the_request_shows_the_job_s_own_options_as_configured(built):
    # Dataflow's pipeline options panel reads sdkPipelineOptions: the job's own values from
    # the config (not their defaults) travel with Beam's.
    request, _, _ = built
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert (options["share_model"], options["precision"], options["batch_size"]) == (True, "float16", 64)
    assert (options["min_batch_size"], options["embeddings"]) == (8, True)
    assert options["max_error_fraction"] == 0.01
    assert options["input_format"] == "files" and options["weights"].endswith("vgg16_untrained.npz")


SUBSCRIPTION = "projects/my-project/subscriptions/inbox-finalized"


def test_a_watch_with_pubsub_is_a_streaming_job_reading_the_buckets_notifications(npz_path, tmp_path):
    # The launcher's own checks list gs:// and read the output's tables, which this machine
    # cannot; here the request is built from the parsed options as run_watch builds it.
    from pipeline import run
    from pipeline.job import resume, watch
    from vgg.weights import describe_weights

    argv = [
        "--config", str(CONFIG), *FILLED_IN,
        "--input", "gs://my-bucket/inbox/**.jpg", "--output", str(tmp_path / "out"), "--weights", npz_path,
        "--watch", "--watch_pubsub", SUBSCRIPTION, "--window_s", "120",
        "--dry_run=True", "--no_auth",
    ]  # fmt: skip
    args, beam_args = parse_args(argv)
    options = pipeline_options(args, beam_args)
    options.view_as(beam.options.pipeline_options.StandardOptions).streaming = True
    pipeline = beam.Pipeline(options=options)
    plan = resume.Plan(args.output)
    run.build_watch_pipeline(
        pipeline, args, describe_weights(npz_path), plan, watch.WatchConfig.from_args(args)
    )
    job = pipeline.run().job
    client = apiclient.DataflowApplicationClient(options)
    uploads = client.stage_file = Uploads()
    client.create_job_description(job)
    request = json.loads(job.json())
    assert request["type"] == "JOB_TYPE_STREAMING"
    (staged_url,) = [url for url in uploads.files if url.endswith("/pipeline.pb")]
    staged = beam_runner_api_pb2.Pipeline.FromString(uploads.files[staged_url])
    # Pub/Sub's read is Dataflow's own: the subscription is in its payload.
    reads = [
        t for t in staged.components.transforms.values() if t.spec.urn == "beam:transform:pubsub_read:v1"
    ]
    assert len(reads) == 1
    payload = beam_runner_api_pb2.PubSubReadPayload.FromString(reads[0].spec.payload)
    assert (payload.subscription, payload.with_attributes) == (SUBSCRIPTION, True)
    names = {t.unique_name for t in staged.components.transforms.values()}
    assert {"Watch/Finalized", "Watch/FirstSeen", "Watch/SkipCommitted", "Commit/Commit"} <= names
    assert request["environment"]["serviceOptions"] == [T4_WITH_DRIVER]
    options = request["environment"]["sdkPipelineOptions"]["options"]
    assert (options["watch"], options["watch_pubsub"], options["window_s"]) == (True, SUBSCRIPTION, 120.0)
