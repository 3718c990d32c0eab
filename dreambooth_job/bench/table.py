"""The table `dreambooth-job bench` prints: one row per option set, the report's header above it."""

from __future__ import annotations

COLUMNS = ("variant", "status", "steps/s", "images/s", "step ms", "first step s", "peak mem",
           "trained", "GFLOP/step", "TFLOP/s", "MFU", "vs baseline")


def table(report: dict) -> str:
    device, settings, model = report["device"], report["settings"], report["model"]
    params = model["parameters"]
    what = model["base_model"] or model["architecture"]
    sizes = (f" (denoiser {params['denoiser'] / 1e6:.1f}M, "
             f"text encoders {params['text_encoders'] / 1e6:.1f}M, "
             f"VAE {params['vae'] / 1e6:.1f}M parameters)" if params else "")
    first = (f"{report['time_to_first_step_seconds']:.1f} s" if report["time_to_first_step_seconds"]
             else "n/a")
    header = [
        f"device: {device['type']} {device['name']}" + (
            f" ({device['cores']} cores, {device['torch_threads']} torch threads)"
            if device["type"] == "cpu" else ""),
        f"model: {what}{sizes}",
        (f"{settings['resolution']} px, batch {settings['batch_size']} "
        f"({settings['images_per_step']} images/step with prior preservation: "
        f"{'on' if settings['prior_preservation'] else 'off'}), {settings['warmup']} warm-up + "
        f"{settings['steps']} measured steps, median step time"),
        f"time to first step from process start: {first}",
    ]
    lines = [*header, "", *_aligned(COLUMNS, [_cells(row) for row in report["variants"]])]
    lines += _phase_lines(report["variants"])
    notes = [f"{row['name']}: {row['error']}" for row in report["variants"] if row["error"]]
    if any(row.get("status") == "ok" and row.get("mfu") is None for row in report["variants"]):
        notes.append("MFU: not reported, the device's peak is unknown (only A100/H100/H200 are listed)")
    if any(row.get("peak_memory_kind") == "cpu_peak_rss" for row in report["variants"]):
        notes.append("peak mem: the process's peak resident set during the row (CPU)")
    return "\n".join(lines + ([""] + notes if notes else []))


def _cells(row: dict) -> list[str]:
    if row["status"] != "ok":
        return [row["name"], row["status"], *["-"] * (len(COLUMNS) - 2)]
    ratio = row.get("speedup_vs_baseline")
    return [
        row["name"], "ok", f"{row['steps_per_second']:.3f}", f"{row['images_per_second']:.3f}",
        f"{row['median_step_seconds'] * 1000:.1f}", f"{row['first_step_seconds']:.2f}",
        _bytes(row["peak_memory_bytes"]), _count(row.get("trainable_parameters")),
        f"{row['flops_per_step'] / 1e9:.2f}",
        f"{row['achieved_tflops']:.4f}", f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a",
        f"{ratio:.2f}x" if ratio is not None else "-",
    ]


def _count(value: int | None) -> str:
    """Parameters, e.g. 859.5M or 0.80M (a LoRA's)."""
    return "n/a" if value is None else f"{value / 1e6:.2f}M"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _phase_lines(rows: list[dict]) -> list[str]:
    """With --profile: each row's profiled step split into training.trainer.STEP_PHASES (host time, ms)."""
    profiled = [row for row in rows if row.get("phase_host_seconds_per_step")]
    if not profiled:
        return []
    phases = list(profiled[0]["phase_host_seconds_per_step"])
    columns = ["variant", *phases, "other", "step"]
    cells = []
    for row in profiled:
        times = row["phase_host_seconds_per_step"]
        other = row["profiled_step_seconds"] - sum(times.values())
        cells.append([row["name"], *(f"{times[p] * 1000:.1f}" for p in phases), f"{other * 1000:.1f}",
                      f"{row['profiled_step_seconds'] * 1000:.1f}"])
    return ["", "profiled steps by phase (host ms per step, under torch.profiler):",
            *_aligned(columns, cells)]


def _aligned(columns, rows: list[list[str]]) -> list[str]:
    """A header, a rule and the rows, each column as wide as its widest cell."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    return ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths),
            *("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)]
