"""How `bench` measures a row: the per-step clock (the trainer's `on_step_end` hook), the FLOPs of
one step and an optional torch.profiler pass; each only calls `Trainer.train(num_steps, ...)`."""

from __future__ import annotations

import re
import time
from pathlib import Path

from dreambooth_job.bench import device as bench_device


class StepClock:
    """`on_step_end` hook marking each step's end: host time on the CPU; on CUDA one event per step,
    read after the run, so timing adds no host-device sync per step."""

    def __init__(self, device_type: str, started: float):
        self.cuda = device_type == "cuda"
        self.started = started
        self.marks: list = []
        self.first_step_seconds: float | None = None
        self.first_step_since_process_start: float | None = None

    def __call__(self, step: int) -> None:
        import torch  # deferred: torch is heavy

        if not self.marks and self.cuda:
            torch.cuda.synchronize()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        if len(self.marks) == 1:
            self.first_step_seconds = time.perf_counter() - self.started
            self.first_step_since_process_start = bench_device.process_age_seconds()

    def step_seconds(self) -> list[float]:
        """Duration of every step, the first one (from the end of setup) included."""
        import torch  # deferred: torch is heavy

        if self.cuda:
            torch.cuda.synchronize()
            later = [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        else:
            later = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return [self.first_step_seconds, *later]


def count_flops(trainer) -> int:
    """FLOPs of one more optimizer step, as torch.utils.flop_counter counts them (matmuls,
    convolutions, attention; not elementwise ops). A compiled UNet is counted on its eager module."""
    import torch  # deferred: torch is heavy
    from torch.utils.flop_counter import (  # deferred: torch is heavy
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    aten = torch.ops.aten
    # PyTorch's table lacks the CPU flash-attention kernels; they do the GPU kernels' matmuls.
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v)}
    compiled = trainer.models.denoiser
    trainer.models.denoiser = getattr(compiled, "_orig_mod", compiled)
    try:
        with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
            trainer.train(1)
    finally:
        trainer.models.denoiser = compiled
    return counter.get_total_flops()


PROFILED_STEPS = 3


def profile_steps(trainer, steps: int, directory: Path, name: str) -> dict:
    """Run `steps` more steps under torch.profiler; write the operator table (by device time on
    CUDA, CPU time otherwise) to DIRECTORY/NAME.txt and return the host's time per step in each of
    the step's phases (training.trainer.STEP_PHASES) and, on CUDA, how busy the device was: a device busy for
    much less than the step's wall time is waiting on the host (launch overhead, syncs)."""
    import torch  # deferred: torch is heavy
    from torch.profiler import ProfilerActivity, profile  # deferred: torch is heavy

    from dreambooth_job.training.trainer import STEP_PHASES  # deferred: trainer imports PIL

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        trainer.train(steps)
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / steps
    averages = profiler.key_averages()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".txt")
    path.write_text(averages.table(sort_by=sort_by, row_limit=50, max_name_column_width=70) + "\n")
    # Host time: on CUDA a phase ends when its kernels are launched, not when they finish.
    host = {event.key: event.cpu_time_total for event in averages
            if event.device_type == torch.autograd.DeviceType.CPU}
    report = {"profile": str(path), "profiled_step_seconds": wall, "phase_host_seconds_per_step": {
        phase: host.get(phase, 0.0) / 1e6 / steps for phase in STEP_PHASES}}
    if cuda:
        # Kernels only: operator rows repeat the time of the kernels they launch.
        report["device_busy_seconds_per_step"] = sum(
            event.self_device_time_total for event in averages
            if event.device_type == torch.autograd.DeviceType.CUDA) / 1e6 / steps
    return report
