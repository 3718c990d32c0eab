"""SDXL's single file (export/single_file.py through the SDXL family): Stability's original
checkpoint layout, which diffusers' own reader turns back into the same pipeline.

Two pipelines: a small one with SDXL's block layout (three UNet levels, the first without
attention, two layers per level, two transformer layers at the deepest, `text_time` embedding)
that `StableDiffusionXLPipeline.from_single_file` reloads; its two text encoders have different
widths because diffusers tells SDXL's encoders apart by width (the job's tiny SDXL model, whose
encoders are both 32 wide, reloads its UNet and VAE only: tests/job/test_sdxl_job.py). And the
real SDXL base 1.0 architecture on the meta device (bench/architectures.py's SDXL configs, no weights), whose
keys diffusers must recognise as `xl_base` and map back onto every weight of the pipeline.
"""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")

from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.families import for_pipeline  # noqa: E402
from dreambooth_job.outputs.export.single_file import save_single_file  # noqa: E402


def _build_sdxl_layout_pipeline(seed: int = 0):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreambooth_job.devtools.tiny_models import CLIP_MAX_LENGTH, clip_tokenizer

    widths, projection, time_dim = (16, 24), 24, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(16, 32, 32), attention_head_dim=(2, 4, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection, cross_attention_dim=sum(widths))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32,
        scaling_factor=0.13025)
    encoders = [model(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=projection,
        hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        for model, width, act in ((CLIPTextModel, widths[0], "quick_gelu"),
                                  (CLIPTextModelWithProjection, widths[1], "gelu"))]
    with torch.no_grad():  # random norms and biases too, so a swapped key cannot hide behind 1s and 0s
        for module in (unet, vae, *encoders):
            for parameter in module.parameters():
                parameter.normal_(0, 0.05)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False)


@pytest.fixture(scope="module")
def sdxl_layout(tmp_path_factory):
    """(pipeline, its diffusers directory): the directory is what `config=` points at on reload."""
    directory = tmp_path_factory.mktemp("sdxl-layout")
    pipeline = _build_sdxl_layout_pipeline()
    pipeline.save_pretrained(directory, safe_serialization=True)
    return pipeline, directory


def _reload(path, config_dir):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch.float32,
        add_watermarker=False)


def _assert_same_weights(original, reloaded, dtype):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want, got = getattr(original, name).state_dict(), getattr(reloaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        for key, tensor in want.items():
            expected = tensor.to(dtype).to(torch.float32) if tensor.is_floating_point() else tensor
            assert torch.equal(got[key].to(expected.dtype), expected), f"{name}.{key}"


@torch.no_grad()
def _sample(pipe):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return pipe("a sks dog", height=32, width=32, num_inference_steps=2, latents=latents,
                output_type="pt").images


def test_round_trip_through_from_single_file_gives_the_same_pipeline(sdxl_layout, tmp_path):
    pipeline, config_dir = sdxl_layout
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline), dtype=torch.float32)
    reloaded = _reload(path, config_dir)
    _assert_same_weights(pipeline, reloaded, torch.float32)
    torch.testing.assert_close(_sample(reloaded), _sample(pipeline), rtol=0, atol=0)


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_precision_applies_to_every_weight(sdxl_layout, tmp_path, precision, dtype):
    from safetensors import safe_open

    pipeline, config_dir = sdxl_layout
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline), dtype=precision)
    expected_dtype = {torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        other = {key for key in names if f.get_slice(key).get_dtype() != expected_dtype}
    assert other == {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids"}  # integers
    _assert_same_weights(pipeline, _reload(path, config_dir), dtype)


def test_the_file_uses_sdxls_original_layout(sdxl_layout, tmp_path):
    """What A1111 and ComfyUI look for: SDXL's prefixes, LDM block names, OpenCLIP's fused q/k/v."""
    from safetensors import safe_open

    pipeline = sdxl_layout[0]
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline), dtype=torch.float32,
                     metadata={"identifier": "sks"})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt", "identifier": "sks"}
        projection = f.get_tensor("conditioner.embedders.1.model.text_projection")
    assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "conditioner"}
    assert {".".join(key.split(".")[:3]) for key in keys if key.startswith("conditioner.")} == {
        "conditioner.embedders.0", "conditioner.embedders.1"}
    for key in ("model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
                "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
                "conditioner.embedders.1.model.positional_embedding",
                "first_stage_model.decoder.up.1.upsample.conv.weight"):
        assert key in keys, key
    # open_clip multiplies by the projection from the right: the Linear's weight transposed.
    assert torch.equal(projection, pipeline.text_encoder_2.text_projection.weight.T)


def test_an_sd_pipeline_with_an_sdxl_unet_is_refused(sdxl_layout, tmp_path):
    from diffusers import StableDiffusionPipeline

    sdxl = sdxl_layout[0]
    mixed = StableDiffusionPipeline(
        unet=sdxl.unet, vae=sdxl.vae, text_encoder=sdxl.text_encoder, tokenizer=sdxl.tokenizer,
        scheduler=sdxl.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    with pytest.raises(InvalidInputError, match="'text_time' embeddings"):
        save_single_file(mixed, tmp_path / "subject.safetensors", family=for_pipeline(mixed))
    assert list(tmp_path.iterdir()) == []


def _real_sdxl_checkpoint():
    """SDXL base 1.0's modules on the meta device, and its single-file state dict (shapes only)."""
    from dreambooth_job.bench.architectures import build_sdxl_models as build_models
    from dreambooth_job.families.sdxl import StableDiffusionXL
    from dreambooth_job.outputs.export.single_file import UNET_PREFIX, VAE_PREFIX, unet_to_ldm, vae_to_ldm

    models = build_models(device="meta")
    checkpoint = {UNET_PREFIX + k: v for k, v in unet_to_ldm(models["unet"].state_dict(),
                                                             models["unet"].config).items()}
    checkpoint.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(models["vae"].state_dict(),
                                                                models["vae"].config).items()})
    encoders = StableDiffusionXL().single_file_text_encoders(types.SimpleNamespace(**models))
    for prefix, state in encoders.items():
        checkpoint.update({prefix + k: v for k, v in state.items()})
    return models, checkpoint


def test_real_sdxl_keys_are_what_diffusers_reads_as_sdxl_base():
    """At SDXL's real size diffusers needs no config to know the file: it detects `xl_base` from
    the keys, and its converters map them back onto every weight of each module, shapes and all."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )

    models, checkpoint = _real_sdxl_checkpoint()
    assert infer_diffusers_model_type(checkpoint) == "xl_base"
    unet = convert_ldm_unet_checkpoint(checkpoint, models["unet"].config)
    vae = convert_ldm_vae_checkpoint(checkpoint, models["vae"].config)
    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(checkpoint).items()}
    open_clip = convert_open_clip_checkpoint(models["text_encoder_2"], checkpoint,
                                             prefix="conditioner.embedders.1.model.")
    converted_modules = {"unet": unet, "vae": vae, "text_encoder": clip, "text_encoder_2": open_clip}
    for name, converted in converted_modules.items():
        # position_ids: a buffer the file carries for old loaders and transformers no longer saves.
        want = {k: tuple(v.shape) for k, v in models[name].state_dict().items()}
        got = {k: tuple(v.shape) for k, v in converted.items() if k != "embeddings.position_ids"}
        assert got == want, name
