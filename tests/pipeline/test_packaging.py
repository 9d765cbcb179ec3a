"""What remote workers get: the sdist `--setup_file` ships, the wheel, the SDK container and the configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.transforms.environments import DockerEnvironment

import vgg
from pipeline.job.options import config_to_argv, known_option_names, load_config, parse_args
from tests.conftest import REPO

PACKAGES = ("vgg", "pipeline")
CLASS_INDEX = "vgg/data/imagenet_class_index.json"
IMAGE = f"vgg16-beam-gpu:{vgg.__version__}"  # the tag the README's build command gives
NOT_SOURCES = (
    ".git",
    ".venv*",
    ".flink",
    ".prism",
    "site",
    "*.egg-info",
    "build",
    "dist",
    "output",
    "__pycache__",
    ".*_cache",
    "*.npz",
    "*.h5",
)


def source_files() -> list[str]:
    """What must reach a worker: every module of both packages, and the class names."""
    modules = [
        p.relative_to(REPO).as_posix()
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    return sorted([*modules, CLASS_INDEX])


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and wheel, built from a copy of the checkout (builds write into the tree)."""
    root = tmp_path_factory.mktemp("packaging")
    src, out = root / "src", root / "dist"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    # What Beam's stager runs for --setup_file when the `build` package is not installed
    # (apache_beam/runners/portability/stager.py, _build_setup_package); Dataflow workers
    # pip-install the resulting tarball at start-up.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out)],
        cwd=src, check=True, capture_output=True,
    )  # fmt: skip
    pip_wheel = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    subprocess.run([sys.executable, "-m", *pip_wheel], check=True, capture_output=True)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@pytest.mark.packaging
def test_sdist_for_setup_file_has_every_module_and_the_class_names(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        # Members are "vgg16-beam-0.2.0/vgg/...": drop the top folder.
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
    missing = sorted(set(source_files()) - names)
    assert not missing, f"the sdist lacks {missing}"
    assert {"setup.py", "README.md", "pyproject.toml"} <= names  # setup.py reads README.md


@pytest.mark.packaging
def test_wheel_has_every_module_and_the_class_names_and_nothing_else(dists):
    _, wheel = dists
    assert wheel.name == f"vgg16_beam-{vgg.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    packaged = sorted(n for n in names if not n.startswith(f"vgg16_beam-{vgg.__version__}.dist-info/"))
    assert packaged == source_files()  # no tests/, no configs/, no stray top-level modules


@pytest.mark.packaging
def test_sdist_installs_and_imports_like_on_a_worker(dists, tmp_path):
    # A worker pip-installs the tarball into its environment; here into a bare target folder,
    # put first on sys.path, and imported from a folder that is not the checkout.
    sdist, _ = dists
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(sdist)],
        check=True, capture_output=True,
    )  # fmt: skip
    probe = (
        "import vgg, pipeline.job.options; from vgg.classes import class_names; names = class_names(); "
        "print(vgg.__file__); print(pipeline.job.options.__file__); "
        "print(len(names), names[0].wnid, names[0].label, names[999].wnid, names[999].label)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    vgg_file, pipeline_file, classes = done.stdout.splitlines()
    assert vgg_file == str(target / "vgg" / "__init__.py")
    assert pipeline_file == str(target / "pipeline" / "job" / "options.py")
    # 1000 ImageNet classes read from the packaged JSON: index 0 is the tench, 999 toilet tissue.
    assert classes == "1000 n01440764 tench n15075141 toilet_tissue"


# ------------------------------------------------------------------------------ configs


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Flags with which the Flink configs parse with neither network nor Java.

    The launcher fetches Beam's Flink job server into Beam's jar cache unless it is there
    (pipeline.job.options.check_flink_job_server): here it is. And it looks for the program
    that would start it: here any program.
    """
    cache = tmp_path_factory.mktemp("jars")
    minor = load_config(str(REPO / "configs" / "flink.yaml"))["flink_version"]
    (cache / f"beam-runners-flink-{minor}-job-server-{beam.__version__}.jar").touch()
    return [f"--jar_cache_dir={cache}", f"--job_server_java_launcher={sys.executable}"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_uses_only_known_option_names_and_parses(path, offline):
    config = load_config(str(path))
    assert sorted(set(config) - set(known_option_names())) == []
    config_to_argv(config, [])
    args, beam_args = parse_args(["--config", str(path), *offline])
    PipelineOptions(beam_args).get_all_options()  # Beam itself accepts every value
    assert args.input and args.output and args.weights


@pytest.fixture
def beam_options(offline):
    """The job's options and Beam's from configs/NAME, as the launcher parses them."""

    def parse(name: str):
        args, beam_args = parse_args(["--config", str(REPO / "configs" / name), *offline])
        return args, PipelineOptions(beam_args)

    return parse


def test_dataflow_gpu_config_sets_what_gpu_workers_need(beam_options):
    args, options = beam_options("dataflow_gpu.yaml")
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    ]
    assert "use_runner_v2" in options.view_as(DebugOptions).experiments
    workers = options.view_as(WorkerOptions)
    assert workers.sdk_container_image.endswith(f"/{IMAGE}")
    assert (workers.machine_type, workers.disk_size_gb, workers.max_num_workers) == ("n1-standard-8", 50, 100)
    # One copy of VGG16 per GPU although the VM runs one SDK process per vCPU.
    assert args.share_model is True
    assert (args.precision, args.batch_size) == ("float16", 64)
    assert all(uri.startswith("gs://") for uri in (*args.input, args.output, args.weights))


def test_flink_cluster_config_runs_the_same_container(beam_options):
    args, options = beam_options("flink_cluster.yaml")
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    flink = options.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "YOUR_JOBMANAGER_HOST:8081"
    assert flink.flink_version in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "DOCKER"
    assert portable.environment_config.endswith(f"/{IMAGE}")
    assert args.share_model is False  # one harness per TaskManager: nothing to share


def test_flink_config_is_the_local_clusters_run_with_the_same_flink_version(beam_options):
    # configs/flink.yaml is what tests/pipeline/test_flink.py runs; flink_cluster.yaml
    # changes only where a real cluster differs.
    _, local = beam_options("flink.yaml")
    _, cluster = beam_options("flink_cluster.yaml")
    flink, cluster_flink = local.view_as(FlinkRunnerOptions), cluster.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "127.0.0.1:8081"
    assert flink.flink_version == cluster_flink.flink_version
    # Neither names a job-server jar: the launcher fetches Beam's own for its release, as
    # Beam's FlinkRunner does (the Flink tests add the one scripts/flink_setup.sh builds).
    assert flink.flink_job_server_jar is cluster_flink.flink_job_server_jar is None
    portable = local.view_as(PortableOptions)
    assert portable.environment_type == "PROCESS"
    assert json.loads(portable.environment_config) == {"command": "scripts/flink_sdk_worker.sh"}
    assert os.access(REPO / "scripts" / "flink_sdk_worker.sh", os.X_OK)
    # Beam parses this flag as a string.
    assert portable.sdk_worker_parallelism == cluster.view_as(PortableOptions).sdk_worker_parallelism == "1"


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return [tuple(line.split(None, 1)) for line in lines]


@pytest.mark.beam_version
def test_dockerfile_base_image_is_beams_sdk_for_the_launchers_beam_and_python():
    instructions = dockerfile_instructions()
    first_from = next(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    declared = [arg for op, arg in instructions[:first_from] if op == "ARG"]  # what the image name uses
    # No default Beam version, which would go stale as setup.py's range moves on: the build
    # is given the launcher's (the Dockerfile's and docs/deployment.md's build command).
    assert "BEAM_VERSION" in declared
    defaults = dict(arg.split("=", 1) for arg in declared if "=" in arg)
    build_args = {**defaults, "BEAM_VERSION": beam.__version__}
    image = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], instructions[first_from][1])
    # Beam's own default container for this launcher (Beam and Python versions must match).
    assert image == DockerEnvironment.default_docker_image()
    assert image == f"apache/beam_python{sys.version_info[0]}.{sys.version_info[1]}_sdk:{beam.__version__}"


def test_dockerfile_installs_the_project_with_cuda_and_keeps_beams_entrypoint():
    instructions = dockerfile_instructions()
    copies = [arg for op, arg in instructions if op == "COPY"]
    assert copies == [
        "setup.py pyproject.toml README.md /tmp/vgg16-beam/",
        "vgg /tmp/vgg16-beam/vgg",
        "pipeline /tmp/vgg16-beam/pipeline",
    ]
    (install,) = [arg for op, arg in instructions if op == "RUN"]
    assert install.startswith('pip install "/tmp/vgg16-beam[gpu]" "apache-beam[gcp,aws]==${BEAM_VERSION}"')
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    # The build context keeps what the COPY lines need.
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")
    }
    assert not ignored & {"setup.py", "pyproject.toml", "README.md", "vgg", "pipeline", "*.py", "*.json"}
