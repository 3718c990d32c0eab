"""Refuse up front, in one line, a run that cannot fit the GPU by the estimate even with every
memory saving on: a FLUX.1 [dev] full fine-tune on an 80 GB card would otherwise load 17 B
parameters, sample its class images and die of out-of-memory at its first step.

    from dreambooth_job.training import memory_fit
    memory_fit.check_before_download(config, memory_fit.device_memory())  # configs only
    memory_fit.check(config, family, pipeline, resolution, memory_fit.device_memory())

The leanest run (memory_estimate.py's model) has gradient checkpointing on, latents and prompt
embeddings cached so the VAE and the text encoders leave the GPU before the first step (unless
the text encoders train), and 8-bit Adam only if the run asked for it (the one line says when it
would fit with it). Its peak is the larger of the weights on the device while the caches are
filled and the training step's. Compared with the device's total memory, without the headroom
`gradient_checkpointing: auto` keeps: only what cannot fit is refused. On the CPU there is no
device limit and nothing is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from dreambooth_job import families
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import places
from dreambooth_job.training import buckets, devices, lora_adapters, memory_estimate

GIB = memory_estimate.GIB
CONFIG_MAX_BYTES = 1 << 20  # a model_index.json or config.json is a few KB
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCounts:
    """Parameters of the pipeline's parts, and of the LoRA adapters the run would add."""

    denoiser: int
    text_encoders: int
    vae: int
    denoiser_adapters: int = 0
    text_encoder_adapters: int = 0


@dataclass(frozen=True)
class RunShape:
    """What of the run's config the estimate reads."""

    lora: bool
    train_text_encoder: bool
    optimizer: str
    images_per_step: int
    ema: bool = False

    @classmethod
    def of(cls, config) -> RunShape:
        return cls(lora=config.train_mode == "lora", train_text_encoder=config.train_text_encoder,
                   optimizer=config.resolved_optimizer,
                   images_per_step=config.train_batch_size * (2 if config.prior_preservation else 1),
                   ema=config.ema_decay > 0)


def leanest_peak_bytes(counts: ModelCounts, run: RunShape, levels, family) -> int:
    """The estimated peak of `run` with every memory saving on (the module docs), its activations
    per image `levels` (ModelFamily.activation_levels) at `family`'s bytes per unit; bf16."""
    encoders = counts.text_encoders if run.train_text_encoder else 0
    if run.lora:
        trained = counts.denoiser_adapters + (counts.text_encoder_adapters if run.train_text_encoder else 0)
        base = counts.denoiser + encoders  # frozen, in bf16, under the adapters
    else:
        trained, base = counts.denoiser + encoders, 0
    # The caches are filled with everything on the device; training keeps the VAE only when the
    # embeddings are not cached (the text encoders train), and then the frozen encoders with it.
    loading = memory_estimate.weight_bytes(trained, base + counts.text_encoders - encoders + counts.vae,
                                           half_precision=True)
    frozen = base + (counts.vae if run.train_text_encoder else 0)
    training = memory_estimate.peak_bytes(
        trainable_params=trained, frozen_params=frozen, activation_levels=levels,
        images_per_step=run.images_per_step, half_precision=True, checkpointing=True,
        optimizer=run.optimizer, family=family, ema=run.ema)
    return max(loading, training)


def refusal(counts: ModelCounts, run: RunShape, levels, family, device_bytes: int | None,
            what: str) -> str | None:
    """The one line refusing `run` on a device of `device_bytes` (None: the CPU, no limit), or
    None when its leanest estimate fits. `what` names the model and mode in that line."""
    if device_bytes is None:
        return None
    peak = leanest_peak_bytes(counts, run, levels, family)
    if peak <= device_bytes:
        return None
    hint = "a smaller resolution or batch"
    if run.optimizer == "adamw" and leanest_peak_bytes(
            counts, dataclasses.replace(run, optimizer="adamw-8bit"), levels, family) <= device_bytes:
        hint = "--use-8bit-adam"
    elif not run.lora:
        hint = "--train-mode lora"
    return (f"{what} does not fit this GPU: estimated peak {peak / GIB:.1f} GiB even with gradient "
            f"checkpointing, cached latents and embeddings and the text encoders off the GPU, against "
            f"{device_bytes / GIB:.1f} GiB of device memory (training/memory_fit.py); try {hint}")


def device_memory() -> int | None:
    """The total memory of the GPU training runs on (devices.pick_device), None on the CPU."""
    import torch  # deferred: torch is heavy

    device = devices.pick_device()
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def pipeline_counts(family, pipeline, config) -> ModelCounts:
    """The loaded pipeline's parameters, and the adapters the run's LoRA options would add."""
    parts = family.components(pipeline)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    denoiser_adapters = encoder_adapters = 0
    if config.train_mode == "lora":
        denoiser_adapters = lora_adapters.lora_parameter_count(
            parts["denoiser"], config.lora_rank, config.lora_target_modules)
        encoder_adapters = sum(lora_adapters.lora_parameter_count(
            encoder, config.lora_rank, lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS)
            for encoder in family.text_encoders(pipeline).values())
    return ModelCounts(denoiser=counts.pop("denoiser"), vae=counts.pop("vae"),
                       text_encoders=sum(counts.values()), denoiser_adapters=denoiser_adapters,
                       text_encoder_adapters=encoder_adapters)


def check(config, family, pipeline, resolution: int, device_bytes: int | None) -> None:
    """InvalidInputError (exit 2) when the run cannot fit the device by the estimate; nothing on
    the CPU. Called once the base model has loaded, before class images and training."""
    if device_bytes is None:
        return
    priced = buckets.priced_resolution(config, family, pipeline, resolution)
    levels = family.activation_levels(family.denoiser(pipeline).config,
                                      priced // pipeline.vae_scale_factor)
    line = refusal(pipeline_counts(family, pipeline, config), RunShape.of(config), levels, family,
                   device_bytes, f"--train-mode {config.train_mode} of {family.name} at {resolution} px")
    if line:
        raise InvalidInputError(line)


def check_before_download(config, device_bytes: int | None) -> None:
    """`check` from the base model's configs alone (model_index.json and the denoiser's, VAE's and
    text encoders' config.json, a few KB from a local directory or an s3:// prefix), the models built
    on the meta device: a mode that cannot fit is refused before gigabytes of weights are fetched.
    Nothing on the CPU; a hub id, or configs that cannot be read or built, leave it to `check`
    once the model has loaded (logged)."""
    if device_bytes is None or not (places.is_s3(config.base_model) or _is_dir(config.base_model)):
        return
    try:
        family, pipeline = meta_pipeline(config.base_model)
    except InvalidInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the check after loading covers what this cannot read
        log.info("memory check from the configs skipped (%s: %s); it runs once the model has loaded",
                 type(exc).__name__, exc)
        return
    check(config, family, pipeline, config.resolution or family.reference.resolution, device_bytes)


def _is_dir(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def _read_json(uri: str) -> dict:
    data = places.read_bytes(uri, max_bytes=CONFIG_MAX_BYTES)
    if len(data) > CONFIG_MAX_BYTES:
        raise ValueError(f"{uri} is larger than {CONFIG_MAX_BYTES} bytes")
    return json.loads(data)


def meta_pipeline(source: str):
    """The family of the pipeline at `source` and a stand-in for it holding the models its family
    counts (ModelFamily.components), built on the meta device from their config.json files, and its
    VAE's scale factor; no weights read."""
    import diffusers  # deferred: diffusers is heavy
    import torch  # deferred: torch is heavy
    import transformers  # deferred: transformers is heavy

    index = _read_json(places.join(source, "model_index.json"))
    family = families.for_class_name(index.get("_class_name"), f"--base-model {source}")
    parts = {}
    with torch.device("meta"):
        for name in (family.denoiser_name, "vae", *family.text_encoder_names):
            library, class_name = index[name]
            settings = _read_json(places.join(source, name, "config.json"))
            if library == "diffusers":
                parts[name] = getattr(diffusers, class_name).from_config(settings)
            else:
                model_class = getattr(transformers, class_name)
                parts[name] = model_class(model_class.config_class.from_dict(settings))
    vae_levels = len(parts["vae"].config.block_out_channels)
    return family, SimpleNamespace(**parts, vae_scale_factor=2 ** (vae_levels - 1))
