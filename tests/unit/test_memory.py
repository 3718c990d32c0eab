"""The memory estimate behind `gradient_checkpointing: auto`."""

import pytest

from dreambooth_job import families
from dreambooth_job.training import memory_estimate

SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280),
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)}
SD = next(f for f in families.FAMILIES if "StableDiffusionPipeline" in f.pipeline_classes)


def levels(config, latent_side, family=SD):
    return family.activation_levels(config, latent_side)
GIB = 2**30


def test_eight_bit_adam_keeps_a_quarter_of_the_optimizer_state():
    params = 1_000_000
    full, eight_bit = (memory_estimate.training_state_bytes(params, name) for name in ("adamw", "adamw-8bit"))
    assert full - 4 * params == 4 * (eight_bit - 4 * params)


def test_activations_grow_with_images_and_area_and_double_in_fp32():
    def saved(side, images, half):
        return memory_estimate.activation_bytes(levels(SD15_UNET, side), images, half, SD)

    one = saved(64, 1, True)
    assert saved(64, 2, True) == 2 * one
    assert saved(128, 1, True) == 4 * one
    assert saved(64, 1, False) == 2 * one


def test_checkpointing_only_when_the_estimate_does_not_fit():
    required = 10 * 2**30
    assert not memory_estimate.needs_checkpointing(required, free_bytes=4 * required)
    assert memory_estimate.needs_checkpointing(required, free_bytes=required)
    # The headroom is what separates "fits" from "fits exactly".
    assert memory_estimate.needs_checkpointing(required, free_bytes=required + memory_estimate.HEADROOM_BYTES)


@pytest.fixture(scope="module")
def meta():
    """The published SD 1.5 and SDXL architectures, built on the meta device (no weights)."""
    from dreambooth_job.bench.estimate import meta_models

    return {name: meta_models(name) for name in ("sd15", "sdxl")}


def needs_checkpointing(models, *, latent_side, free_gib, lora=False):
    """The Trainer's `gradient_checkpointing: auto` decision (training/setup.py), batch 1 with prior
    preservation, bf16, on `free_gib` left after the weights are on the device."""
    from dreambooth_job.config.train_config import TrainConfig
    from dreambooth_job.training import lora_adapters as lora_lib

    family, modules = models
    denoiser = modules["denoiser"]
    defaults = TrainConfig()
    trained = (lora_lib.lora_parameter_count(denoiser, defaults.lora_rank, defaults.lora_target_modules)
               if lora
               else sum(p.numel() for p in denoiser.parameters()))
    config = TrainConfig(resolution=latent_side * 8)
    required = memory_estimate.training_bytes(config, family, denoiser.config, 8, trained, 2,
                                              half_precision=True)
    return memory_estimate.needs_checkpointing(required, int(free_gib * GIB))


def test_sd15_estimate_is_the_one_its_constant_was_measured_with(meta):
    """Activations per image at 512 px stay what the first estimate (latent area x the sum of
    the channels, 100 bytes a unit) gave: SD 1.5's `auto` decisions do not move."""
    first_estimate = 64 * 64 * sum(SD15_UNET["block_out_channels"]) * 100
    now = memory_estimate.activation_bytes(levels(meta["sd15"].modules["denoiser"].config, 64), 1,
                                           half_precision=True, family=SD)
    assert abs(now - first_estimate) / first_estimate < 0.01


def test_sdxl_levels_count_their_transformer_depth(meta):
    family, modules = meta["sdxl"]
    config = modules["denoiser"].config
    assert list(config["transformer_layers_per_block"]) == [1, 2, 10]
    per_level = family.activation_levels(config, 128)
    assert per_level == [320 * 128**2, 640 * 64**2 * 3, 1280 * 32**2 * 11]
    assert sum(per_level) > 5 * sum(levels(meta["sd15"].modules["denoiser"].config, 64))


def test_checkpointing_keeps_block_inputs_and_recomputes_the_largest_level():
    per_level = levels(SD15_UNET, 64)
    kept = memory_estimate.activation_bytes(per_level, 2, half_precision=True, family=SD,
                                            checkpointing=True)
    assert kept == 2 * sum(per_level) * 2 + 2 * max(per_level) * SD.activation_bytes_per_unit


def test_auto_checkpointing_turns_on_for_sdxl_where_sd15_fits(meta):
    # An A100 40 GB with the fp32 UNet loaded has about 28 GiB free; 80 GB about 66 GiB.
    assert not needs_checkpointing(meta["sd15"], latent_side=64, free_gib=28)
    assert needs_checkpointing(meta["sdxl"], latent_side=128, free_gib=28)
    assert not needs_checkpointing(meta["sdxl"], latent_side=128, free_gib=66)


def test_lora_counts_adapters_only_and_sdxl_lora_at_1024_still_needs_activations(meta):
    assert not needs_checkpointing(meta["sd15"], latent_side=64, free_gib=8, lora=True)
    assert needs_checkpointing(meta["sdxl"], latent_side=128, free_gib=8, lora=True)
    assert not needs_checkpointing(meta["sdxl"], latent_side=128, free_gib=28, lora=True)


def test_peak_estimates_order_as_the_modes_do(meta):
    from dreambooth_job.bench.estimate import estimate

    full, ckpt, lean = (estimate("sdxl", checkpointing=c, use_8bit_adam=a, built=meta["sdxl"])
                        for c, a in ((False, False), (True, False), (True, True)))
    lora = estimate("sdxl", train_mode="lora", built=meta["sdxl"])
    assert full.resolution == 1024 and full.trainable_params > 2.5e9
    assert full.peak_bytes > ckpt.peak_bytes > lean.peak_bytes > lora.peak_bytes
    assert lora.trainable_params < 0.01 * full.trainable_params
    # LoRA's frozen base is in bf16: less than the full run's fp32 UNet alone.
    assert lora.peak_bytes - memory_estimate.activation_bytes(
        levels(meta["sdxl"].modules["denoiser"].config, 128), 2, True, meta["sdxl"].family
    ) < full.trainable_params * 4
