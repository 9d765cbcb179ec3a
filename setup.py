"""Packaging for vgg16-beam: also what `--setup_file` ships to remote Beam workers."""

import pathlib
import re

from setuptools import find_namespace_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "vgg" / "__init__.py").read_text()).group(1)
INTEROP = ["duckdb>=1.1", "polars>=1.0", "pandas>=2.0,<2.3", "lancedb>=0.40", "embedding-reader>=1.8"]
# DuckDB reads the Delta tables with its delta extension, which `INSTALL delta` downloads from
# extensions.duckdb.org. The test machines cannot reach it, so the tests load it from PyPI's
# wheel, built for exactly one DuckDB release: duckdb is pinned to it for the tests only.
DUCKDB_DELTA = ["duckdb==1.5.5", "duckdb-extensions==1.5.5", "duckdb-extension-delta==1.5.5"]
DALI = "nvidia-dali-cuda120>=2.4,<3; sys_platform == 'linux'"  # wheels for Linux only

setup(
    name="vgg16-beam",
    version=VERSION,
    description="Batch-label and embed image collections with VGG16 on Apache Beam",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # vgg.data holds the class index (no __init__.py): a namespace package, listed as one.
    packages=find_namespace_packages(
        include=["vgg", "vgg.*", "pipeline", "pipeline.*"], exclude=["*.__pycache__"]
    ),
    package_data={"vgg.data": ["*.json"]},
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.16,<2.22",  # Keras 3; the Linux wheel runs on CUDA GPUs with the 'gpu' extra
        "keras>=3.3",
        # gs:// and s3:// are first-class inputs and outputs, so both filesystems come along.
        # A range, newest first: the job runs on every release from 2.62 on. The local Flink
        # tests pin 2.62.0 in their own venv (scripts/constraints-flink.txt, docs/flink.md).
        "apache-beam[gcp,aws]>=2.62,<3",
        "numpy>=1.26",
        "pillow>=10.3",
        "pyarrow>=14",
        "h5py>=3.10",
        "pyyaml>=6",
        # CRC32C of TFRecord frames (pipeline.job.read.tfrecord); Beam's gcp extra brings it too.
        "google-crc32c>=1.5",
        # The output's two Delta Lake tables and the commit of each run (pipeline.table).
        "deltalake>=1.6,<2",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
        # --decode_device gpu: JPEGs decoded and resized on the GPU by NVIDIA DALI (CUDA 12 build).
        "gpu-decode": [DALI],
        "search": ["faiss-cpu>=1.8"],
        # Only for `python -m benchmarks.…`: the Beam peers (Beam's TF model handler imports
        # tensorflow_hub, which needs tf-keras matching TensorFlow) and the plot.
        "bench": ["tensorflow-hub>=0.16", "tf-keras>=2.16,<2.22", "matplotlib>=3.7"],
        # The tools users open an output with (docs/search.md; tests/pipeline/test_interop.py),
        # in releases that fit Beam 2.62's pins too (pyarrow<17, numpy<2.3, dill<0.3.2): lancedb
        # 0.40 needs pyarrow>=16; pandas stays below 2.3 as Beam's own dataframe extra does.
        # autofaiss is left out (numpy<2 in every release); embedding-reader is the reader
        # autofaiss loads inputs with.
        "interop": INTEROP,
        # Hugging Face datasets, apart: it installs beside current Beam, not beside Beam 2.62
        # (it needs multiprocess, whose releases after 0.70.9, the last for Python 3.8, need
        # dill>=0.3.2; Beam 2.62 pins dill<0.3.2). run_tests.sh installs it in .venv, not in
        # .venv-flink.
        "interop-hf": ["datasets>=3.0"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "moto[server]>=5",
            "faiss-cpu>=1.8",
            # tests/test_docs.py builds the manual under docs/ with `mkdocs build --strict`.
            "mkdocs>=1.6,<2",
            *INTEROP,
            *DUCKDB_DELTA,
            # benchmarks/decoders.py compares it with Pillow (tests/benchmarks/test_decoders.py).
            "simplejpeg>=1.7",
        ],
    },
    entry_points={
        "console_scripts": [
            "vgg-predict=vgg.predict:main",
            "vgg-weights=vgg.weights:main",
        ]
    },
)
