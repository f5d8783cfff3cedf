"""What the machine offers the encoder and the neighbour search: CPU threads, native bf16 and
CUDA, answered without importing torch wherever the answer cannot depend on it."""

from __future__ import annotations

import functools
import glob
import os
import shutil

# Files an NVIDIA (or ROCm, or WSL) kernel driver creates; without any of them and without a
# CUDA driver library no CUDA device can exist, whatever torch would say.
_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/compat",
    "/usr/lib/wsl/lib",
)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def cpu_threads() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cuda_possible() -> bool:
    """Cheap check (no torch import): could a CUDA or ROCm device exist at all?  False when no
    driver device file, no CUDA driver library and no ``nvidia-smi`` is present."""
    if any(os.path.exists(p) for p in _DRIVER_FILES):
        return True
    if shutil.which("nvidia-smi") is not None:
        return True
    return _libcuda_present()


def _libcuda_present() -> bool:
    """A CUDA driver library (libcuda.so*) in LD_LIBRARY_PATH or a usual library folder."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    return any(glob.glob(os.path.join(d, "libcuda.so*")) for d in (*dirs, *_LIBRARY_DIRS))


@functools.cache
def cuda_available() -> bool:
    """True when torch can use a CUDA device.  torch is imported only when a driver could be
    present (:func:`cuda_possible`); the answer is cached for the process."""
    if not cuda_possible():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
