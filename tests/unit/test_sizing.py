"""The sizing profiles derive from the architectures' parameter counts and the stated rates, and
the job checks its SIGTERM budget against its real checkpoint once the model has loaded."""

from __future__ import annotations

import logging

import pytest

from dreambooth_job import families
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.training import memory_estimate, sizing

FAMILY = {f.name: f for f in families.FAMILIES}


@pytest.mark.parametrize(("family", "model"), [("sd", "sd15"), ("sdxl", "sdxl"),
                                              ("flux2-klein", "flux2-klein-4b"),
                                              ("flux1", "flux1-dev")])
def test_parameter_counts_are_the_published_architectures(family, model):
    from dreambooth_job.bench.estimate import meta_models
    from dreambooth_job.training import lora_adapters

    detected, built = meta_models(model)
    assert detected is FAMILY[family]
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in built.items()}
    params = FAMILY[family].reference
    assert params.denoiser == counts["denoiser"] and params.vae == counts["vae"]
    encoders = [name for name in counts if name.startswith("text_encoder")]
    assert params.text_encoders == sum(counts[name] for name in encoders)
    defaults, lora_format = TrainConfig(), FAMILY[family].lora_format
    adapters = lora_adapters.lora_parameter_count(
        built["denoiser"], 16, lora_format.targets(defaults.lora_targets, built["denoiser"])) + sum(
        lora_adapters.lora_parameter_count(built[name], 16, lora_format.text_encoder_targets)
        for name in encoders)
    assert params.lora_adapters_rank16 == adapters


@pytest.mark.parametrize("model", ["flux2-klein-9b", "flux1-dev"])
def test_the_flow_variants_reference_counts_are_their_published_architectures(model):
    """klein 9B (a variant the klein family loads) and FLUX.1 [dev] (whose family takes
    reference.FLUX1_DEV over), counted on the meta device from their published configurations."""
    from dreambooth_job.bench.architectures import build_pipeline
    from dreambooth_job.families import reference
    from dreambooth_job.training import lora_adapters

    pipeline = build_pipeline(model, device="meta")
    expected = FAMILY["flux2-klein"].reference_9b if model == "flux2-klein-9b" else reference.FLUX1_DEV
    encoders = [n for n in ("text_encoder", "text_encoder_2") if hasattr(pipeline, n)]
    count = {n: sum(p.numel() for p in getattr(pipeline, n).parameters())
             for n in ("transformer", "vae", *encoders)}
    assert (expected.denoiser, expected.vae) == (count["transformer"], count["vae"])
    assert expected.text_encoders == sum(count[n] for n in encoders)
    # FLUX.1's family counts its default preset (--lora-targets attention); klein 9B's reference
    # counts --lora-target-modules' default.
    targets = (FAMILY["flux1"].lora_format.targets(TrainConfig().lora_targets, pipeline.transformer)
               if model == "flux1-dev" else TrainConfig().lora_target_modules)
    denoiser_adapters = lora_adapters.lora_parameter_count(pipeline.transformer, 16, targets)
    # Text-encoder LoRA: klein's Qwen, FLUX.1's CLIP (its T5 carries none, as diffusers' trainer).
    encoder_adapters = lora_adapters.lora_parameter_count(
        pipeline.text_encoder, 16, lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS)
    assert expected.lora_adapters_rank16 == denoiser_adapters + encoder_adapters
    if model == "flux1-dev":
        assert denoiser_adapters == reference.FLUX1_DEV_DENOISER_LORA_RANK16


def test_an_sdxl_full_checkpoint_is_about_31_gb():
    unet_only = memory_estimate.checkpoint_bytes(FAMILY["sdxl"].reference.denoiser, "adamw")
    assert 30 * sizing.GB < unet_only < 31.5 * sizing.GB
    # 8-bit Adam keeps one byte per moment.
    assert memory_estimate.checkpoint_bytes(1000, "adamw-8bit") == 6000


@pytest.mark.parametrize("profile", sizing.PROFILES.values(), ids=list(sizing.PROFILES))
def test_each_profile_covers_its_estimates(profile):
    params = profile.reference
    assert profile.job_grace_seconds >= params.step_seconds + sizing.checkpoint_seconds(
        profile.checkpoint_bytes)
    assert profile.job_grace_seconds >= sizing.MIN_GRACE_SECONDS
    peak = sum(profile.disk_parts.values())
    assert peak < profile.disk_request_gib * sizing.GIB < profile.disk_limit_gib * sizing.GIB
    in_tmp = profile.disk_parts["checkpoint being written"] + profile.disk_parts["saved model"]
    # Past a limit the pod is evicted with 1 s of grace: both stay above the estimate.
    assert in_tmp < profile.tmp_limit_gib * sizing.GIB <= profile.disk_limit_gib * sizing.GIB
    assert profile.memory_request_gib * sizing.GIB > sizing.SHM_BYTES + sizing.HOST_BASE_BYTES
    assert profile.memory_limit_gib > profile.memory_request_gib


def test_bigger_checkpoints_get_longer_grace():
    grace = {name: p.job_grace_seconds for name, p in sizing.PROFILES.items()}
    assert grace["sdxl-full"] > grace["sd-full"] > grace["sd-lora"]
    assert grace["sdxl-full"] > grace["sdxl-lora"] >= grace["sd-lora"]


def test_an_sdxl_full_run_in_an_sd_profile_is_warned_about(caplog):
    sd_budget = sizing.PROFILES["sd-full"].job_grace_seconds
    with caplog.at_level(logging.WARNING, logger="dreambooth_job.training.sizing"):
        message = sizing.check_grace(sd_budget, "sdxl", "full", FAMILY["sdxl"].reference.denoiser, "adamw")
    assert message and f"--termination-grace-seconds {sd_budget} is shorter than" in message
    assert "'sdxl-full'" in message and "\n" not in message
    assert message in caplog.text


def test_a_run_within_its_profile_is_not_warned_about(caplog):
    for profile in sizing.PROFILES.values():
        trained = sizing.trained_parameters(profile.reference, profile.train_mode)
        assert sizing.check_grace(profile.job_grace_seconds, profile.family, profile.train_mode,
                                  trained, "adamw", profile.variant) is None
    assert caplog.text == ""


def test_auto_budget_is_the_profiles_or_what_a_bigger_run_needs():
    sd_lora = sizing.PROFILES["sd-lora"]
    tiny = sizing.job_budget(None, "sd", "lora", 1000, "adamw")
    assert tiny == sd_lora.job_grace_seconds
    huge_rank = sizing.job_budget(None, "sd", "lora", 10**9, "adamw")
    assert huge_rank > sd_lora.job_grace_seconds
    assert sizing.job_budget(42.0, "sd", "lora", 1000, "adamw") == 42.0


def test_the_operator_guides_table_is_the_profiles():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md").read_text()
    assert "\n".join(sizing.rows()) in guide, (
        "docs/operator-guide.md's profile table: run python -m dreambooth_job.training.sizing")


def test_every_family_has_both_profiles_and_an_undetected_model_gets_the_largest():
    assert set(sizing.PROFILES) == {f"{f.name}-{m}" for f in families.FAMILIES
                                    for m in sizing.TRAIN_MODES} | {
        f"{f.name}-{v}-{m}" for f in families.FAMILIES for v in f.variants for m in sizing.TRAIN_MODES}
    for mode, name in sizing.UNDETECTED.items():
        undetected = sizing.PROFILES[name]
        assert undetected.train_mode == mode
        covered = {f.name for f in families.FAMILIES if f.sized_when_undetected}
        for profile in (p for p in sizing.PROFILES.values()
                        if p.train_mode == mode and p.family in covered):
            assert profile.job_grace_seconds <= undetected.job_grace_seconds
            assert profile.disk_request_gib <= undetected.disk_request_gib
            assert profile.memory_request_gib <= undetected.memory_request_gib


def test_flux2_klein_is_not_what_an_undetected_model_is_sized_for():
    """klein's full profile (a 95 GB checkpoint) would size every hub-id SD pod; its runs name it."""
    assert not FAMILY["flux2-klein"].sized_when_undetected
    assert set(sizing.UNDETECTED.values()) == {"sdxl-full", "sdxl-lora"}
    klein, sdxl = sizing.PROFILES["flux2-klein-full"], sizing.PROFILES["sdxl-full"]
    assert klein.job_grace_seconds > sdxl.job_grace_seconds


def test_a_run_of_a_family_without_profiles_is_budgeted_as_the_largest():
    largest = sizing.PROFILES[sizing.UNDETECTED["full"]]
    assert sizing.job_budget(None, "some-new-family", "full", 1000, "adamw") == largest.job_grace_seconds


@pytest.mark.parametrize(("model", "variant"), [("flux2-klein-4b", None), ("flux2-klein-9b", "9b")])
def test_klein_9b_is_told_from_4b_by_its_transformer_config(model, variant):
    """The published configs (bench/architectures.py): 9B's 32 heads x 128 against 4B's 24 x 128;
    a config without them (or a tiny test model) is the family's reference size."""
    from dreambooth_job.bench.architectures import FLUX2_KLEIN_TRANSFORMER_CONFIGS

    klein = FAMILY["flux2-klein"]
    assert klein.variant(dict(FLUX2_KLEIN_TRANSFORMER_CONFIGS[model])) == variant
    assert klein.variant({}) is None and klein.variant({"num_attention_heads": "32"}) is None
    assert all(f.variant({"num_attention_heads": 99, "attention_head_dim": 99}) is None
               for f in families.FAMILIES if not f.variants)


def test_klein_9b_profiles_are_sized_by_9b_counts_and_exceed_4b():
    for mode in sizing.TRAIN_MODES:
        big, small = sizing.PROFILES[f"flux2-klein-9b-{mode}"], sizing.PROFILES[f"flux2-klein-{mode}"]
        assert (big.family, big.variant, big.reference) == ("flux2-klein", "9b",
                                                             FAMILY["flux2-klein"].reference_9b)
        assert big.memory_request_gib > small.memory_request_gib
        assert big.disk_request_gib > small.disk_request_gib
    full_9b = sizing.PROFILES["flux2-klein-9b-full"]
    assert full_9b.job_grace_seconds > sizing.PROFILES["flux2-klein-full"].job_grace_seconds
    # Once loaded, a 9B run's budget is its own profile's, not 4B's.
    trained = sizing.trained_parameters(full_9b.reference, "full")
    assert sizing.job_budget(None, "flux2-klein", "full", trained, "adamw", "9b") == full_9b.job_grace_seconds
