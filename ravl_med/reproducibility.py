"""What a run's numbers depend on besides its config and seed: CPU kernels, thread count, versions.

Measured (issue 14): the same demo command and seed gave a different stage-1 model with
``OMP_NUM_THREADS=1`` than with torch's default of 2 threads (floating-point sums are split
differently between threads), and a different model on another machine of the same kind. So:

* :func:`pin_cpu_kernels` fixes the vector instruction set the numeric libraries dispatch to (torch's
  ATen kernels, oneDNN convolutions, MKL and OpenBLAS) at AVX2 on x86-64 CPUs that have it, so a
  machine with AVX-512 computes what one without it computes. It must run before those libraries
  do their first computation (the CLI calls it first thing; ``make`` and the Docker image set the
  same variables). A variable the user already set is left alone, and recorded.
* The thread count is a config value (``threads``), never the machine's core count; the stage
  runners apply it with :func:`ravl_med.models.runtime.fixed_threads`.
* :func:`provenance` is what every result file and MLflow run records, so two results can be
  compared knowing whether they were computed the same way.

Torch-free on purpose: importing this module must not load torch.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["CPU_KERNEL_PINS", "RESULT_PACKAGES", "cpu_model", "pin_cpu_kernels", "provenance"]

#: Environment variables that fix each numeric library's CPU code path (x86-64 with AVX2).
CPU_KERNEL_PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",   # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # oneDNN (torch's CPU convolutions)
    "MKL_CBWR": "AVX2",              # MKL conditional numerical reproducibility (torch's BLAS)
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS (numpy's BLAS: the discovery's distance products)
}

#: Distributions whose versions change results (recorded with every result).
RESULT_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "kmedoids",
                   "open_clip_torch", "timm", "monai", "pydicom")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()`` where that is absent."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_cpu_kernels() -> dict[str, str]:
    """Sets :data:`CPU_KERNEL_PINS` in ``os.environ`` where unset (x86-64 CPUs with AVX2 only).

    Returns:
        the pins in effect afterwards ({} on other CPUs), including values the user had set.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or "avx2" not in _cpu_flags():
        return {}
    for name, value in CPU_KERNEL_PINS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in CPU_KERNEL_PINS}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def provenance(*, threads: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """How a result was computed (JSON-ready), recorded in result files and MLflow runs.

    Args:
        threads: intra-op CPU threads the run used (the config's ``threads``).
        seed: the run's seed.
        device: the device the run computed on (``cpu``, ``cuda``, ``cuda:0``).

    Returns:
        {"seed", "threads", "device", "cpu", "cpu_capability" (torch's, when torch is loaded),
        "kernel_pins" (the variables of :data:`CPU_KERNEL_PINS` as set), "python", "platform",
        "versions" ({distribution: version} for :data:`RESULT_PACKAGES`)}.
    """
    import sys

    capability = None
    torch = sys.modules.get("torch")
    if torch is not None:
        capability = str(torch.backends.cpu.get_cpu_capability())
    return {
        "seed": int(seed),
        "threads": int(threads),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_capability": capability,
        "kernel_pins": {name: os.environ[name] for name in CPU_KERNEL_PINS if name in os.environ},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in RESULT_PACKAGES},
    }
