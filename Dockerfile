# Custom Beam SDK container for GPU workers: Beam's Python SDK image + TensorFlow with its
# CUDA libraries + this project. Used by Dataflow (--sdk_container_image), by Flink/Spark
# with --environment_type=DOCKER, and as an EXTERNAL worker pool (run it with --worker_pool).
#
# The base image must be the same Beam version and Python minor version as the launcher
# that submits the job, so BEAM_VERSION has no default: the build takes the launcher's
# (setup.py allows a range of Beam releases; tests/pipeline/test_packaging.py checks that
# the image name this gives is Beam's own default container for the launcher). Build and
# push from the checkout (see docs/deployment.md):
#
#   docker build --build-arg BEAM_VERSION="$(.venv/bin/python -c 'import apache_beam; print(apache_beam.__version__)')" \
#     -t REGION-docker.pkg.dev/PROJECT/REPOSITORY/vgg16-beam-gpu:0.2.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPOSITORY/vgg16-beam-gpu:0.2.0
ARG PY_VERSION=3.11
ARG BEAM_VERSION
FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}

# An ARG declared before FROM is not visible after it unless declared again.
ARG BEAM_VERSION

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The NVIDIA driver is not in the image: the host provides it (Dataflow's
# install-nvidia-driver; the NVIDIA container toolkit elsewhere) and mounts it under
# /usr/local/nvidia, which the nvidia/cuda images also put on these paths. nvidia-smi there
# is how the worker's "VGG16 ready on ..." log line reports the GPU's memory.
ENV PATH=/usr/local/nvidia/bin:${PATH} \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib

COPY setup.py pyproject.toml README.md /tmp/vgg16-beam/
COPY vgg /tmp/vgg16-beam/vgg
COPY pipeline /tmp/vgg16-beam/pipeline

# The 'gpu' extra is tensorflow[and-cuda]: CUDA and cuDNN arrive as pip wheels matched to
# this TensorFlow. Beam is pinned to the base image's version so pip cannot swap out the SDK
# that /opt/apache/beam/boot starts. The import check fails the build, not the first worker,
# if the package data (class names) did not make it in.
RUN pip install "/tmp/vgg16-beam[gpu]" "apache-beam[gcp,aws]==${BEAM_VERSION}" \
 && rm -rf /tmp/vgg16-beam \
 && cd / \
 && python -c "import pipeline.run; from vgg.classes import class_names; assert len(class_names()) == 1000"

# Beam's boot program stays the entrypoint: Dataflow and the portable runners start the
# container with their own arguments (or --worker_pool for an EXTERNAL worker pool).
ENTRYPOINT ["/opt/apache/beam/boot"]
