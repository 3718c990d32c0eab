"""`dreambooth-job bench`: time the training step that `train` runs, under several option sets.

    dreambooth-job bench                                 # tiny model, 64 px, default options
    dreambooth-job bench --baseline --sweep --json bench.json
    dreambooth-job bench --model sd15 --resolution 512 --steps 20 --warmup 5 --baseline \\
        --variant mixed_precision=bf16 --variant compile_unet=true,channels_last=true
    dreambooth-job bench --variant train_mode=lora      # LoRA against full fine-tuning

Every row is TrainConfig's defaults plus the row's overrides (`--variant key=value,...`, keys as in
`config --print-defaults`), driven through `Trainer.setup()` and `Trainer.train(num_steps,
on_step_end=...)`: the code `train` runs, timed from its `on_step_end` hook (bench_profile.py).
Each row starts from freshly built weights with the same seed, so all rows train the same model on
the same synthetic images.

`--baseline` adds a row trained the plain way the reference script (diffusers'
examples/dreambooth/train_dreambooth.py) does with its defaults: VAE and text encoder run every
step, fp32, PyTorch's default AdamW kernel (a loop over parameters on the CPU, foreach on CUDA),
gradients zeroed in place, the loss read back every step, no TF32, no gradient checkpointing. It
is the same Trainer with those switches (`baseline_variant`, and `set_grads_to_none=False`); the
reference's per-step photo decoding is not part of it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from dreambooth_job import families
from dreambooth_job.bench import architectures, estimate
from dreambooth_job.bench import device as bench_device
from dreambooth_job.bench import profile as bench_profile
from dreambooth_job.bench import table as bench_report
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.lora_mode import denoiser_targets
from dreambooth_job.training import base_models, devices, lora_adapters, memory_estimate
from dreambooth_job.training.preflight import missing_capabilities

NUM_IMAGES = 4
BASELINE = {"cache_latents": False, "mixed_precision": "no", "gradient_checkpointing": False,
            "channels_last": False, "compile_unet": False, "tf32": False, "attention_backend": "auto"}
SWEEP = ("mixed_precision=bf16", "mixed_precision=fp16", "gradient_checkpointing=true",
         "train_text_encoder=true", "use_8bit_adam=true", "cache_latents=false",
         "attention_backend=math", "attention_backend=eager", "channels_last=true",
         "adam_impl=foreach", "adam_impl=loop", "compile_unet=true")


@dataclass(frozen=True)
class Settings:
    model: str
    base_model: str | None
    resolution: int
    batch_size: int
    steps: int
    warmup: int
    prior_preservation: bool
    seed: int
    profile_dir: str | None = None

    @property
    def images_per_step(self) -> int:
        return self.batch_size * (2 if self.prior_preservation else 1)


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)
    baseline: bool = False


def baseline_variant() -> Variant:
    """The reference's step; its `torch.optim.AdamW()` takes PyTorch's default kernel: foreach for
    CUDA parameters, a loop over parameters on the CPU."""
    adam = "foreach" if devices.device_type() == "cuda" else "loop"
    return Variant("baseline", {**BASELINE, "adam_impl": adam}, baseline=True)


def parse_variant(spec: str) -> Variant:
    """`key=value[,key=value]` over TrainConfig fields, e.g. `mixed_precision=bf16,compile_unet=on`."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise InvalidInputError(f"--variant {spec!r}: expected key=value[,key=value...]")
    overrides = config_sources.normalize_keys({k.strip(): v.strip() for k, v in pairs},
                                              source=f"--variant {spec!r}")
    return Variant(spec, overrides)


def bench_config(settings: Settings, variant: Variant) -> cfg.TrainConfig:
    total = settings.warmup + settings.steps
    values = {"instance_data": "bench", "class_noun": "dog", "output": "bench",
              "resolution": settings.resolution, "train_batch_size": settings.batch_size,
              "max_train_steps": total, "prior_preservation": settings.prior_preservation,
              "num_class_images": NUM_IMAGES, "seed": settings.seed, "metrics_port": 0,
              # One loss read-back at the end, like `train` between log lines; the baseline reads
              # it every step, as the reference does for its progress bar.
              "log_every": 1 if variant.baseline else total}
    values.update(variant.overrides)
    return cfg.TrainConfig(**values)


def memory_refusal(settings: Settings, variants: list[Variant], device_type: str,
                   available: int | None) -> str | None:
    """Why this machine cannot hold even the leanest variant (memory_estimate.py's estimate of its peak
    against the memory available), or None. Checked for the large architectures before they are
    built: the kernel would otherwise kill the process halfway through."""
    if settings.base_model or settings.model not in architectures.LARGE or available is None:
        return None
    built = estimate.meta_models(settings.model)
    half = device_type == "cuda"  # the CPU trains in fp32 (mixed precision auto: no)
    needed = min(estimate.estimate(
        settings.model, train_mode=config.train_mode, resolution=settings.resolution,
        checkpointing=config.gradient_checkpointing is True,
        use_8bit_adam=config.resolved_optimizer == "adamw-8bit", half_precision=half, built=built).peak_bytes
        for config in (bench_config(settings, v) for v in variants))
    if needed <= available:
        return None
    return (f"--model {settings.model} needs about {needed / 2**30:.0f} GiB to train on the "
            f"{device_type} (training/memory_estimate.py's estimate, leanest variant) and "
            f"{available / 2**30:.0f} GiB is available: run it on a GPU")


def unavailable(config: cfg.TrainConfig, device_type: str) -> str | None:
    """Why `train` would refuse this variant here (the job's own start-up check), or None."""
    return next(iter(missing_capabilities(config, device_type)), None)


def run_variant(variant: Variant, settings: Settings, build, device: dict) -> dict:
    """One row: build fresh weights, set up the Trainer, train warmup + steps, count FLOPs."""
    import torch  # deferred: torch is heavy

    from dreambooth_job.training.trainer import Trainer  # deferred: trainer imports PIL

    row: dict = {"name": variant.name, "baseline": variant.baseline, "overrides": variant.overrides,
                 "status": "ok", "error": None}
    config = bench_config(settings, variant)
    reason = unavailable(config, device["type"])
    if reason:
        return {**row, "status": "unavailable", "error": reason}
    memory = bench_device.PeakMemory(device["type"])
    trainer = pipeline = None
    try:
        gc.collect()
        memory.reset()
        started = time.perf_counter()
        pipeline = build()
        built = time.perf_counter()
        needed = _training_state_bytes(pipeline, config)
        free = bench_device.available_memory_bytes(device["type"])
        if free is not None and needed > free:
            return {**row, "status": "skipped", "error": (
                f"needs about {needed / 2**30:.1f} GiB more for gradients and optimizer state, "
                f"{free / 2**30:.1f} GiB available")}
        trainer = Trainer(config, pipeline, instance_images=_images(settings, 0), instance_prompt="a sks dog",
                          class_images=_images(settings, 1000), class_prompt="a dog",
                          set_grads_to_none=not variant.baseline)
        trainer.setup()
        set_up = time.perf_counter()
        clock = bench_profile.StepClock(device["type"], set_up)
        trainer.train(settings.warmup + settings.steps, on_step_end=clock)
        seconds = clock.step_seconds()
        trained = sum(p.numel() for p in trainer.models.trainable)
        flops = bench_profile.count_flops(trainer)
        peak = memory.peak_bytes()
        profiled = (bench_profile.profile_steps(trainer, bench_profile.PROFILED_STEPS,
                                                Path(settings.profile_dir), variant.name)
                    if settings.profile_dir else {})
    except Exception as exc:  # noqa: BLE001 - one failing option set must not end the comparison
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {**row, "status": "error", "error": f"{type(exc).__name__}: {message}"[:500]}
    finally:
        del trainer, pipeline
        if "compile_unet" in variant.overrides:
            torch._dynamo.reset()
        gc.collect()
    measured = seconds[settings.warmup:] or seconds
    median = statistics.median(measured)
    steps_per_second = 1.0 / median if median > 0 else 0.0
    tflops = flops * steps_per_second / 1e12
    peak_tflops = bench_device.peak_tflops(device["name"], config.mixed_precision if config.mixed_precision
                                           != "auto" else _auto_precision(device), config.tf32)
    return {**row, "precision": _auto_precision(device) if config.mixed_precision == "auto"
            else config.mixed_precision,
            "steps_per_second": steps_per_second,
            # From the row's config: a variant may override the batch size.
            "images_per_second": steps_per_second * config.train_batch_size * (
                2 if config.prior_preservation else 1),
            "median_step_seconds": median, "step_seconds": seconds, "measured_steps": len(measured),
            "build_seconds": built - started, "setup_seconds": set_up - built,
            "first_step_seconds": clock.first_step_seconds,
            "first_step_since_process_start_seconds": clock.first_step_since_process_start,
            "peak_memory_bytes": peak, "peak_memory_kind": memory.kind,
            # What the optimizer updates (LoRA: the adapters); a checkpoint holds about 12 bytes
            # of each (fp32 weight and AdamW's two moments).
            "trainable_parameters": trained,
            "flops_per_step": flops, "achieved_tflops": tflops,
            "mfu": tflops / peak_tflops if peak_tflops else None, "peak_tflops": peak_tflops,
            **profiled}


def _auto_precision(device: dict) -> str:
    import torch  # deferred: torch is heavy

    return devices.resolve_precision("auto", torch.device(device["type"]))


def _training_state_bytes(pipeline, config: cfg.TrainConfig) -> int:
    """A lower bound on what training adds to the loaded model (activations come on top): for
    LoRA, the adapters' (counted from the layers' shapes, before any is added)."""

    family = families.for_pipeline(pipeline)
    modules = family.trainable_modules(pipeline, config.train_text_encoder)
    if config.train_mode == "lora":
        # The denoiser first (trainable_modules' order), the text encoders after it.
        params = sum(lora_adapters.lora_parameter_count(
                         module, config.lora_rank,
                         denoiser_targets(config, family, pipeline) if name == "denoiser"
                         else family.lora_format.text_encoder_targets)
                     for name, module in modules.items())
    else:
        params = memory_estimate.trained_parameters(modules.values())
    return memory_estimate.training_state_bytes(params, config.resolved_optimizer, config.ema_decay > 0)


def _images(settings: Settings, seed: int):
    """Synthetic photos: smooth colour fields with noise, at the training resolution."""
    import numpy as np  # deferred: numpy is heavy
    from PIL import Image  # deferred: PIL is heavy

    rng = np.random.default_rng(settings.seed + seed)
    size = settings.resolution
    ramp = np.linspace(0, 255, size)[None, :, None]
    images = []
    for _ in range(NUM_IMAGES):
        base = ramp * rng.random(3) + rng.normal(0, 20, (size, size, 3))
        images.append(Image.fromarray(np.clip(base, 0, 255).astype("uint8"), "RGB"))
    return images


def model_builder(settings: Settings):
    """A function returning fresh, identical weights of the benchmarked model at each call."""
    if settings.base_model:

        cache_dir = cfg.TrainConfig(instance_data="bench", class_noun="dog", output="bench").cache_dir
        base = base_models.resolve_base_model(settings.base_model, cache_dir)
        # An unsupported family (SDXL for now) exits 2 before any row, naming its pipeline class.
        families.detect(base.local_path, cache_dir, source=base.source)
        return lambda: base_models.load_pipeline(base, cache_dir)
    if settings.model in architectures.UNSUPPORTED:
        raise InvalidInputError(architectures.UNSUPPORTED[settings.model])
    return lambda: architectures.build_pipeline(settings.model, seed=settings.seed)


def run_bench(settings: Settings, variants: list[Variant], *, echo=lambda line: None) -> dict:
    """Run every variant in this process and return the report (what --json writes)."""
    import diffusers  # deferred: diffusers is heavy
    import huggingface_hub  # deferred: huggingface_hub is heavy
    import transformers  # deferred: transformers is heavy

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()
    build_model = model_builder(settings)
    device = bench_device.device_info()
    parameters: dict[str, int] = {}

    def build():
        pipeline = build_model()
        parameters.update(parameters or estimate.parameter_counts(pipeline))
        return pipeline

    rows = []
    for variant in variants:
        echo(f"running {variant.name} ...")
        row = run_variant(variant, settings, build, device)
        echo(f"  {row['status']}" + (f": {row['error']}" if row["error"] else
                                     f": {row['steps_per_second']:.3f} steps/s"))
        rows.append(row)
    baseline = next((r for r in rows if r["baseline"] and r["status"] == "ok"), None)
    for row in rows:
        row["speedup_vs_baseline"] = (row["steps_per_second"] / baseline["steps_per_second"]
                                      if baseline and row["status"] == "ok" else None)
    first = next((r for r in rows if r["status"] == "ok"), None)
    return {
        "schema_version": 1, "command": " ".join(["dreambooth-job", *sys.argv[1:]]),
        "device": device, "versions": bench_device.versions(),
        "model": {"architecture": None if settings.base_model else settings.model,
                  "base_model": settings.base_model, "parameters": parameters or None},
        "settings": {**dataclasses.asdict(settings), "images_per_step": settings.images_per_step},
        "time_to_first_step_seconds": first["first_step_since_process_start_seconds"] if first else None,
        "variants": rows,
    }


# ----------------------------------------------------------------------------------------------
@click.command("bench")
@click.option("--model", type=click.Choice(architectures.ARCHITECTURES), default="tiny", show_default=True,
              help="Architecture built from its published config with random weights.")
@click.option("--base-model", help="A diffusers SD 1.x/2.x pipeline (directory, s3:// or hub id) "
                                   "instead of --model.")
@click.option("--resolution", type=int, help="Training resolution (default: the model's native one).")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Subject photos per step (prior preservation doubles the images).")
@click.option("--steps", type=int, default=10, show_default=True, help="Measured steps per variant.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Unmeasured steps before them.")
@click.option("--prior-preservation/--no-prior-preservation", default=True, show_default=True)
@click.option("--variant", "variant_specs", multiple=True, metavar="KEY=VALUE[,...]",
              help="An option set to compare (repeatable): TrainConfig fields over the defaults.")
@click.option("--sweep", is_flag=True, help="Also compare each switch of SWEEP against the defaults.")
@click.option("--baseline", is_flag=True,
              help="Add the reference trainer's plain step and each row's speed-up over it.")
@click.option("--no-default", is_flag=True, help="Leave out the row with the default options.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report here.")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False),
              help="Also profile 3 more steps of each row with torch.profiler: operator tables in "
                   "this directory; host time per step phase (and device busy time on CUDA) in "
                   "the report.")
def bench(model: str, base_model: str | None, resolution: int | None, batch_size: int, steps: int,
          warmup: int, prior_preservation: bool, variant_specs: tuple[str, ...], sweep: bool,
          baseline: bool, no_default: bool, seed: int, json_path: str | None,
          profile_dir: str | None) -> None:
    """Measure the real training step: steps/s, images/s, time to first step, peak memory,
    FLOPs per step, TFLOP/s and MFU, for several option sets side by side."""
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise InvalidInputError("--steps and --batch-size must be at least 1, --warmup at least 0")
    if not base_model and model in architectures.UNSUPPORTED:
        raise InvalidInputError(architectures.UNSUPPORTED[model])
    settings = Settings(model, base_model, resolution or architectures.NATIVE_RESOLUTION.get(model, 512),
                        batch_size, steps, warmup, prior_preservation, seed, profile_dir)
    variants = [] if no_default else [Variant("default")]
    if baseline:
        variants.append(baseline_variant())
    variants += [parse_variant(spec) for spec in (*(SWEEP if sweep else ()), *variant_specs)]
    if not variants:
        raise InvalidInputError("nothing to run: --no-default without --variant, --sweep or --baseline")
    for variant in variants:
        try:
            bench_config(settings, variant)
        except InvalidInputError as exc:
            raise InvalidInputError(f"--variant {variant.name!r}: {exc.message}") from None
    device_type = devices.device_type()
    refusal = memory_refusal(settings, variants, device_type,
                             bench_device.available_memory_bytes(device_type))
    if refusal:
        raise InvalidInputError(refusal)
    report = run_bench(settings, variants, echo=lambda line: click.echo(line, err=True))
    click.echo(bench_report.table(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)
