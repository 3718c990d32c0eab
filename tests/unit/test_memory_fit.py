"""The up-front refusal of a train mode that cannot fit the GPU (training/memory_fit.py), with the
published architectures' real counts and each family's activation calibration."""

import pytest

from dreambooth_job import families
from dreambooth_job.bench.architectures import FLUX1_DEV_TRANSFORMER_CONFIG, FLUX2_KLEIN_4B_TRANSFORMER_CONFIG
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import reference
from dreambooth_job.families.flux2 import Flux2Klein
from dreambooth_job.families.transformer_activations import FLUX1_DEV_ACTIVATIONS
from dreambooth_job.training import memory_estimate, memory_fit

GIB = 2**30
KLEIN = next(f for f in families.FAMILIES if isinstance(f, Flux2Klein))
KLEIN_4B = memory_fit.ModelCounts(denoiser=KLEIN.reference.denoiser,
                                  text_encoders=KLEIN.reference.text_encoders,
                                  vae=KLEIN.reference.vae, denoiser_adapters=1_966_080)
FLUX1_DEV = memory_fit.ModelCounts(denoiser=reference.FLUX1_DEV.denoiser,
                                   text_encoders=reference.FLUX1_DEV.text_encoders,
                                   vae=reference.FLUX1_DEV.vae,
                                   denoiser_adapters=reference.FLUX1_DEV_DENOISER_LORA_RANK16)
KLEIN_LEVELS = KLEIN.activation_levels(FLUX2_KLEIN_4B_TRANSFORMER_CONFIG, 128)  # 1024 px
FLUX1_LEVELS = FLUX1_DEV_ACTIVATIONS.levels(FLUX1_DEV_TRANSFORMER_CONFIG, 128)


def run(mode, adam=False):
    return memory_fit.RunShape(lora=mode == "lora", train_text_encoder=False,
                               optimizer=memory_estimate.adam(adam), images_per_step=2)


def test_flux1_dev_full_is_refused_on_80_gib_in_one_line_naming_mode_estimate_and_memory():
    line = memory_fit.refusal(FLUX1_DEV, run("full"), FLUX1_LEVELS, FLUX1_DEV_ACTIVATIONS,
                              80 * GIB, "--train-mode full of flux1-dev at 1024 px")
    assert line is not None and "\n" not in line
    peak = memory_fit.leanest_peak_bytes(FLUX1_DEV, run("full"), FLUX1_LEVELS, FLUX1_DEV_ACTIVATIONS)
    # fp32 weights, gradients and AdamW's moments of 11.9 B parameters: 16 bytes each.
    assert peak > 16 * reference.FLUX1_DEV.denoiser
    assert "--train-mode full of flux1-dev" in line and f"{peak / GIB:.1f} GiB" in line
    assert "80.0 GiB" in line and line.endswith("--train-mode lora")
    # 8-bit Adam does not rescue it either (10 bytes a parameter).
    assert memory_fit.refusal(FLUX1_DEV, run("full", adam=True), FLUX1_LEVELS,
                              FLUX1_DEV_ACTIVATIONS, 80 * GIB, "x") is not None


def test_flux1_dev_lora_fits_80_gib():
    assert memory_fit.refusal(FLUX1_DEV, run("lora"), FLUX1_LEVELS, FLUX1_DEV_ACTIVATIONS,
                              80 * GIB, "x") is None


def test_klein_4b_lora_and_full_are_accepted_on_80_gib():
    for mode in ("lora", "full"):
        assert memory_fit.refusal(KLEIN_4B, run(mode), KLEIN_LEVELS, KLEIN, 80 * GIB, "x") is None


def test_klein_4b_full_on_40_gib_needs_8_bit_adam_and_says_so():
    line = memory_fit.refusal(KLEIN_4B, run("full"), KLEIN_LEVELS, KLEIN, 40 * GIB, "klein full")
    assert line is not None and line.endswith("--use-8bit-adam")
    assert memory_fit.refusal(KLEIN_4B, run("full", adam=True), KLEIN_LEVELS, KLEIN, 40 * GIB, "x") is None


def test_no_device_limit_on_the_cpu():
    assert memory_fit.refusal(FLUX1_DEV, run("full"), FLUX1_LEVELS, FLUX1_DEV_ACTIVATIONS, None, "x") is None


def test_lora_peak_is_the_weights_while_the_caches_fill():
    """LoRA's step holds the bf16 base and small adapters: the peak is loading, with the text
    encoder still on the device (before the embeddings are cached and it leaves)."""
    peak = memory_fit.leanest_peak_bytes(KLEIN_4B, run("lora"), KLEIN_LEVELS, KLEIN)
    weights = 2 * (KLEIN_4B.denoiser + KLEIN_4B.text_encoders + KLEIN_4B.vae) + 4 * KLEIN_4B.denoiser_adapters
    assert peak == weights


@pytest.fixture(scope="module")
def tiny_klein(tiny_flux2_klein_model):
    return KLEIN.load_pipeline(str(tiny_flux2_klein_model), str(tiny_flux2_klein_model.parent))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_check_counts_the_loaded_pipeline_and_refuses_on_a_small_device(tiny_klein, mode):
    config = TrainConfig(train_mode=mode, resolution=64)
    memory_fit.check(config, KLEIN, tiny_klein, 64, None)  # CPU: nothing refused
    counts = memory_fit.pipeline_counts(KLEIN, tiny_klein, config)
    assert counts.denoiser == sum(p.numel() for p in tiny_klein.transformer.parameters())
    assert (counts.denoiser_adapters > 0) == (mode == "lora")
    memory_fit.check(config, KLEIN, tiny_klein, 64, 80 * GIB)
    with pytest.raises(InvalidInputError, match=f"--train-mode {mode} of flux2-klein at 64 px"):
        memory_fit.check(config, KLEIN, tiny_klein, 64, 2**20)


def test_before_download_the_configs_alone_give_the_loaded_models_counts(tiny_flux2_klein_model, tiny_klein):
    """The stand-in built on the meta device from config.json files counts what the loaded pipeline
    holds, and refuses as `check` does, before any weight is read."""
    family, stand_in = memory_fit.meta_pipeline(str(tiny_flux2_klein_model))
    assert family.name == KLEIN.name and stand_in.vae_scale_factor == tiny_klein.vae_scale_factor
    config = TrainConfig(train_mode="full", resolution=64, base_model=str(tiny_flux2_klein_model))
    assert (memory_fit.pipeline_counts(KLEIN, stand_in, config)
            == memory_fit.pipeline_counts(KLEIN, tiny_klein, config))
    memory_fit.check_before_download(config, None)
    memory_fit.check_before_download(config, 80 * GIB)
    with pytest.raises(InvalidInputError, match="--train-mode full of flux2-klein at 64 px"):
        memory_fit.check_before_download(config, 2**20)


def test_before_download_leaves_what_it_cannot_read_to_the_check_after_loading(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "Flux2KleinPipeline"}')  # no configs
    for base_model in (str(tmp_path), "some-org/some-model"):
        memory_fit.check_before_download(TrainConfig(base_model=base_model), 2**20)
