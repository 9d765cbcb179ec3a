"""What the hardware computes natively: CPU features and GPU compute capabilities (no TensorFlow import).

The launcher asks `precision_warning` before it builds anything, so a user who asks for a
reduced precision the device only emulates hears so in one line: on a CPU without
AVX512_BF16 or AMX, TensorFlow runs bfloat16 by converting to float32 and back, and the
job gets slower than in float32, not faster (docs/benchmarks.md). The benchmarks record
`describe()` beside their figures.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

# CPU flags (as /proc/cpuinfo spells them) that decide how reduced precisions run.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 dot products
FLOAT16_CPU_FLAGS = ("avx512_fp16", "amx_fp16")  # native float16 arithmetic
CPU_FLAGS = ("avx2", "avx512f", *BFLOAT16_CPU_FLAGS, *FLOAT16_CPU_FLAGS)

# GPU compute capabilities: float16 arithmetic at full rate or better from 5.3 (and on
# every Volta and later with tensor cores), except 6.1 (consumer Pascal: FP16 at 1/64 of
# the FP32 rate); bfloat16 from 8.0 (Ampere).
FLOAT16_SLOW_GPU = ((6, 1),)
FLOAT16_MIN_GPU = (5, 3)
BFLOAT16_MIN_GPU = (8, 0)


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi lists it."""

    index: int
    uuid: str
    name: str
    compute_capability: tuple[int, int] | None  # None when the driver does not report it


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The text of /proc/cpuinfo, or "" where there is none (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_model(cpuinfo: str) -> str:
    """The first "model name" in cpuinfo text, or "unknown"."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's flags in cpuinfo text (every core of one machine has the same)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def query_gpus(timeout_s: float = 10.0) -> str:
    """nvidia-smi's CSV listing of the GPUs, or "" without a driver or GPU.

    Asking the driver, not CUDA, keeps the launcher from initialising CUDA (and from
    importing TensorFlow) just to decide whether to warn.
    """
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def parse_gpus(csv: str) -> list[Gpu]:
    """nvidia-smi's `index, uuid, name, compute_cap` lines as Gpus; other lines are skipped.

    Drivers older than the compute_cap field print "[N/A]" or refuse the query; the
    capability is then None.
    """
    gpus = []
    for line in csv.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        major, _, minor = fields[3].partition(".")
        capability = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
        gpus.append(Gpu(int(fields[0]), fields[1], fields[2], capability))
    return gpus


def visible_gpus(gpus: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs CUDA (hence TensorFlow) will use, in its order, given CUDA_VISIBLE_DEVICES.

    Unset: all of them. Empty or "-1": none. Otherwise a comma-separated list of indices
    or UUIDs (or UUID prefixes), read up to the first entry that matches no GPU, as CUDA does.
    """
    if cuda_visible_devices is None:
        return list(gpus)
    chosen = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        match = next(
            (
                g
                for g in gpus
                if entry == str(g.index) or (entry.startswith("GPU-") and g.uuid.startswith(entry))
            ),
            None,
        )
        if match is None:
            break
        chosen.append(match)
    return chosen


def model_device(gpus: list[Gpu]) -> str:
    """Where the model will run: "GPU <name>" for the first visible GPU, else "CPU"."""
    return f"GPU {gpus[0].name}" if gpus else "CPU"


def native_precisions_cpu(flags: frozenset[str]) -> dict[str, bool]:
    """Precision -> whether this CPU computes it natively (float32 always)."""
    return {
        "float32": True,
        "bfloat16": any(flag in flags for flag in BFLOAT16_CPU_FLAGS),
        "float16": any(flag in flags for flag in FLOAT16_CPU_FLAGS),
    }


def native_precisions_gpu(capability: tuple[int, int] | None) -> dict[str, bool | None]:
    """Precision -> whether a GPU of this compute capability computes it natively (None: unknown)."""
    if capability is None:
        return {"float32": True, "bfloat16": None, "float16": None}
    return {
        "float32": True,
        "bfloat16": capability >= BFLOAT16_MIN_GPU,
        "float16": capability >= FLOAT16_MIN_GPU and capability not in FLOAT16_SLOW_GPU,
    }


def precision_warning(
    precision: str,
    *,
    cpuinfo: str | None = None,
    gpus_csv: str | None = None,
    cuda_visible_devices: str | None = None,
) -> str | None:
    """One line warning that `precision` has no native support where the model will run, else None.

    The model runs on the first GPU CUDA makes visible, or on the CPU when there is none.
    The arguments default to this machine (/proc/cpuinfo, nvidia-smi, the environment);
    tests pass their own. A GPU nvidia-smi lists but TensorFlow cannot use (no CUDA
    libraries: install the 'gpu' extra) is still taken for the device.
    """
    if precision == "float32":
        return None
    if gpus_csv is None:
        gpus_csv = query_gpus()
    if cuda_visible_devices is None:
        cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible_gpus(parse_gpus(gpus_csv), cuda_visible_devices)
    if gpus:
        gpu = gpus[0]
        native = native_precisions_gpu(gpu.compute_capability).get(precision)
        if native is not False:  # supported, unknown precision, or a driver too old to say
            return None
        major, minor = gpu.compute_capability
        need = "8.0 or later" if precision == "bfloat16" else "5.3 or later, except 6.1"
        return (
            f"--precision {precision} is not native on {gpu.name} (compute capability {major}.{minor}; "
            f"{precision} needs {need}): expect it to run slower than float32"
        )
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    if not cpuinfo:  # not Linux: nothing to go by
        return None
    native = native_precisions_cpu(cpu_flags(cpuinfo)).get(precision)
    if native is not False:
        return None
    needs = " or ".join(
        f.upper() for f in (BFLOAT16_CPU_FLAGS if precision == "bfloat16" else FLOAT16_CPU_FLAGS)
    )
    return (
        f"--precision {precision} is emulated on this CPU ({cpu_model(cpuinfo)}, no {needs}): "
        "expect it to run slower than float32"
    )


def describe(cpuinfo: str | None = None, gpus_csv: str | None = None) -> dict:
    """This machine's features that decide precision and speed, for a benchmark's JSON."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    gpus_csv = query_gpus() if gpus_csv is None else gpus_csv
    flags = cpu_flags(cpuinfo)
    gpus = visible_gpus(parse_gpus(gpus_csv), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return {
        "cpu_model": cpu_model(cpuinfo),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_native": native_precisions_cpu(flags),
        "gpus": [
            {
                "name": gpu.name,
                "compute_capability": ".".join(map(str, gpu.compute_capability))
                if gpu.compute_capability
                else None,
                "native": native_precisions_gpu(gpu.compute_capability),
            }
            for gpu in gpus
        ],
        "model_device": model_device(gpus),
    }
