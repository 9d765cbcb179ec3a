"""Which precisions the hardware runs natively, read from fake /proc/cpuinfo and nvidia-smi outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vgg import hardware


def cpuinfo(model: str, flags: str) -> str:
    """Two processors, as /proc/cpuinfo lists them (the fields this module reads, among others)."""
    one = f"processor\t: 0\nvendor_id\t: X\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n\n"
    return one + one.replace("processor\t: 0", "processor\t: 1")


AVX2_EPYC = cpuinfo("AMD EPYC 7B12", "avx avx2 fma")
BF16_EPYC = cpuinfo("AMD EPYC 9B14", "avx2 avx512f avx512_bf16 avx512bw")
SAPPHIRE = cpuinfo(
    "Intel(R) Xeon(R) Platinum 8481C", "avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile"
)
# nvidia-smi --query-gpu=index,uuid,name,compute_cap --format=csv,noheader
T4 = "0, GPU-1a2b3c4d-0000-0000-0000-000000000001, Tesla T4, 7.5\n"
A100_AND_P4 = (
    "0, GPU-aaaa0000-0000-0000-0000-000000000000, NVIDIA A100-SXM4-40GB, 8.0\n"
    "1, GPU-bbbb0000-0000-0000-0000-000000000000, Tesla P4, 6.1\n"
)


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    """CUDA_VISIBLE_DEVICES unset, whatever the machine running the tests has, unless a test sets it."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_cpu_model_and_flags():
    assert hardware.cpu_model(SAPPHIRE) == "Intel(R) Xeon(R) Platinum 8481C"
    assert {"avx512_fp16", "amx_bf16", "fpu"} <= hardware.cpu_flags(SAPPHIRE)
    assert "avx512f" not in hardware.cpu_flags(AVX2_EPYC)
    # Not Linux, or an empty file: nothing known, nothing claimed.
    assert (hardware.cpu_model(""), hardware.cpu_flags("")) == ("unknown", frozenset())


def test_native_precisions_on_cpus():
    # bfloat16 needs AVX512_BF16 or AMX-BF16; float16 needs AVX512-FP16 or AMX-FP16.
    assert hardware.native_precisions_cpu(hardware.cpu_flags(AVX2_EPYC)) == {
        "float32": True, "bfloat16": False, "float16": False,
    }  # fmt: skip
    assert hardware.native_precisions_cpu(hardware.cpu_flags(BF16_EPYC)) == {
        "float32": True, "bfloat16": True, "float16": False,
    }  # fmt: skip
    assert hardware.native_precisions_cpu(hardware.cpu_flags(SAPPHIRE))["float16"] is True


def test_native_precisions_on_gpus():
    # float16 from 5.3 (6.1 excepted: 1/64-rate FP16), bfloat16 from 8.0; unknown capability: unknown.
    native = hardware.native_precisions_gpu
    assert native((7, 5)) == {"float32": True, "bfloat16": False, "float16": True}
    assert native((8, 0)) == {"float32": True, "bfloat16": True, "float16": True}
    assert native((6, 1))["float16"] is False and native((6, 0))["float16"] is True
    assert native((5, 2))["float16"] is False and native((5, 3))["float16"] is True
    assert native(None) == {"float32": True, "bfloat16": None, "float16": None}


def test_parse_gpus_and_cuda_visible_devices():
    gpus = hardware.parse_gpus(A100_AND_P4 + "No devices were found\n")
    assert [(g.index, g.name, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA A100-SXM4-40GB", (8, 0)),
        (1, "Tesla P4", (6, 1)),
    ]
    # An old driver without the compute_cap field prints [N/A] there.
    old = hardware.parse_gpus("0, GPU-x, Tesla K80, [N/A]\n")
    assert old[0].compute_capability is None
    visible = hardware.visible_gpus
    assert [g.index for g in visible(gpus, None)] == [0, 1]
    assert [g.index for g in visible(gpus, "1")] == [1]
    assert [g.index for g in visible(gpus, "GPU-bbbb")] == [1]  # a UUID prefix, as CUDA accepts
    assert visible(gpus, "") == [] and visible(gpus, "-1") == []
    # CUDA stops at the first entry that names no GPU: "0,7,1" is GPU 0 alone.
    assert [g.index for g in visible(gpus, "0,7,1")] == [0]


def test_warning_on_a_cpu_without_native_bfloat16():
    warn = hardware.precision_warning("bfloat16", cpuinfo=AVX2_EPYC, gpus_csv="")
    assert warn == (
        "--precision bfloat16 is emulated on this CPU (AMD EPYC 7B12, no AVX512_BF16 or AMX_BF16): "
        "expect it to run slower than float32"
    )
    assert hardware.precision_warning("float16", cpuinfo=BF16_EPYC, gpus_csv="") == (
        "--precision float16 is emulated on this CPU (AMD EPYC 9B14, no AVX512_FP16 or AMX_FP16): "
        "expect it to run slower than float32"
    )
    assert hardware.precision_warning("bfloat16", cpuinfo=BF16_EPYC, gpus_csv="") is None
    assert hardware.precision_warning("float16", cpuinfo=SAPPHIRE, gpus_csv="") is None
    assert hardware.precision_warning("float32", cpuinfo=AVX2_EPYC, gpus_csv="") is None
    assert hardware.precision_warning("bfloat16", cpuinfo="", gpus_csv="") is None  # nothing to go by


def test_warning_follows_the_gpu_the_model_runs_on():
    # On a GPU, the CPU's features do not matter: a T4 (7.5) has float16 but not bfloat16.
    assert hardware.precision_warning("float16", cpuinfo=AVX2_EPYC, gpus_csv=T4) is None
    assert hardware.precision_warning("bfloat16", cpuinfo=SAPPHIRE, gpus_csv=T4) == (
        "--precision bfloat16 is not native on Tesla T4 (compute capability 7.5; bfloat16 needs 8.0 or "
        "later): expect it to run slower than float32"
    )
    # The first visible GPU decides: the A100 has both, the P4 (6.1) neither.
    assert hardware.precision_warning("float16", cpuinfo="", gpus_csv=A100_AND_P4) is None
    assert hardware.precision_warning(
        "float16", cpuinfo="", gpus_csv=A100_AND_P4, cuda_visible_devices="1"
    ) == (
        "--precision float16 is not native on Tesla P4 (compute capability 6.1; float16 needs 5.3 or later, "
        "except 6.1): expect it to run slower than float32"
    )
    # GPUs hidden from CUDA: the model runs on the CPU, whose features decide.
    assert (
        hardware.precision_warning("bfloat16", cpuinfo=BF16_EPYC, gpus_csv=T4, cuda_visible_devices="-1")
        is None
    )
    assert "emulated on this CPU" in hardware.precision_warning(
        "bfloat16", cpuinfo=AVX2_EPYC, gpus_csv=T4, cuda_visible_devices=""
    )


def test_describe_records_features_for_a_benchmark(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    got = hardware.describe(cpuinfo=BF16_EPYC, gpus_csv=A100_AND_P4)
    assert got == {
        "cpu_model": "AMD EPYC 9B14",
        "cpu_flags": {
            "avx2": True,
            "avx512f": True,
            "avx512_bf16": True,
            "amx_bf16": False,
            "avx512_fp16": False,
            "amx_fp16": False,
        },  # fmt: skip
        "cpu_native": {"float32": True, "bfloat16": True, "float16": False},
        "gpus": [
            {
                "name": "NVIDIA A100-SXM4-40GB",
                "compute_capability": "8.0",
                "native": {"float32": True, "bfloat16": True, "float16": True},
            }
        ],  # fmt: skip
        "model_device": "GPU NVIDIA A100-SXM4-40GB",
    }


def test_query_gpus_without_a_driver_is_empty(monkeypatch, tmp_path):
    # A machine without nvidia-smi (or whose nvidia-smi fails: no driver loaded) lists no GPU.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hardware.query_gpus() == ""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\nexit 9\n"
    )
    fake.chmod(0o755)
    assert hardware.query_gpus() == ""
    fake.write_text(f"#!/bin/sh\nprintf '{T4}'\n")
    assert hardware.parse_gpus(hardware.query_gpus())[0].name == "Tesla T4"


def test_importing_it_does_not_import_tensorflow():
    # The launcher calls it before anything heavy is loaded.
    code = "import sys, vgg.hardware; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_this_machine_warns_exactly_when_its_description_says_emulated(precision):
    # Device-agnostic: on a CPU-only host the CPU's flags decide, on a GPU host the first GPU's.
    features = hardware.describe()
    device = features["cpu_native"] if features["model_device"] == "CPU" else features["gpus"][0]["native"]
    warning = hardware.precision_warning(precision)
    assert (warning is None) == (device[precision] is not False), (features, warning)
    assert warning is None or (f"--precision {precision} " in warning and "\n" not in warning)
