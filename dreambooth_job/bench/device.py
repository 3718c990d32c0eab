"""What `bench` knows about the machine: its name, its peak throughput (for MFU), peak memory
(CUDA allocator, or the process's peak resident set on the CPU) and library versions.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import time
from pathlib import Path

import psutil

from dreambooth_job import __version__
from dreambooth_job.training.devices import device_type

# Dense (not 2:4 sparse) tensor-core peaks in TFLOP/s from NVIDIA's data sheets, per precision of
# the UNet's matmuls: bf16/fp16 autocast, fp32 with TF32 allowed, plain fp32. First match wins.
PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


def peak_tflops(device_name: str, precision: str, tf32: bool) -> float | None:
    """The device's peak for this precision, or None when the device is not in the table (CPUs)."""
    key = "bf16" if precision in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    for name, peaks in PEAK_TFLOPS:
        if name in device_name:
            return peaks[key]
    return None


def device_info() -> dict:
    import torch  # deferred: torch is heavy

    if device_type() == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": torch.cuda.get_device_name(0),
                "memory_bytes": props.total_memory, "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "memory_bytes": _meminfo("MemTotal")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import accelerate  # deferred: accelerate is heavy
    import diffusers  # deferred: diffusers is heavy
    import torch  # deferred: torch is heavy
    import transformers  # deferred: transformers is heavy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "dreambooth_job": __version__}


def process_age_seconds() -> float:
    """Seconds since this process started (what "time to first step" is measured from)."""
    return time.time() - psutil.Process().create_time()


def available_memory_bytes(device_type: str) -> int | None:
    import torch  # deferred: torch is heavy

    if device_type == "cuda":
        return torch.cuda.mem_get_info()[0]
    return _meminfo("MemAvailable")


class PeakMemory:
    """Peak memory over a block: CUDA's allocator peak, or the process's peak RSS (VmHWM) on the CPU,
    which Linux lets a process reset by writing 5 to /proc/self/clear_refs."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.kind = "cuda_max_allocated" if device_type == "cuda" else "cpu_peak_rss"

    def reset(self) -> None:
        import torch  # deferred: torch is heavy

        if self.device_type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):
            # Freed memory that malloc keeps would otherwise count towards the next variant's peak.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        with contextlib.suppress(OSError):
            # Where this fails, the peak is the process's since it started.
            Path("/proc/self/clear_refs").write_text("5")

    def peak_bytes(self) -> int | None:
        import torch  # deferred: torch is heavy

        if self.device_type == "cuda":
            return torch.cuda.max_memory_allocated()
        return _proc_status_bytes("VmHWM")


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
