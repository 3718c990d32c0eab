"""The single-file writer (dreambooth_job/outputs/export): an original-layout checkpoint that diffusers'
own reader (`from_single_file`) turns back into the same weights, and the saved-precision helpers.

The tiny pipeline has Stable Diffusion 1.x's block layout (four UNet down blocks, the last without
attention; two layers per block; a four-block VAE), so every kind of key the mapping handles occurs.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.families import for_pipeline  # noqa: E402
from dreambooth_job.outputs.export.precision import cast_state_dict, save_pretrained_precision  # noqa: E402
from dreambooth_job.outputs.export.single_file import save_single_file  # noqa: E402


def _build_sd_layout_pipeline(seed: int = 0, version: int = 1):
    """Version 1: OpenAI CLIP (quick_gelu) and conv attention projections; version 2: the OpenCLIP
    text encoder (gelu) and linear projections, as SD 2.x."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreambooth_job.devtools.tiny_models import CLIP_MAX_LENGTH, clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=8,
        use_linear_projection=version == 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu" if version == 2 else "quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    with torch.no_grad():  # random norms and biases too, so a swapped key cannot hide behind 1s and 0s
        for module in (unet, vae, text_encoder):
            for parameter in module.parameters():
                parameter.normal_(0, 0.05)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _saved(tmp_path_factory, version):
    """(pipeline, its diffusers directory): the directory is what `config=` points at on reload."""
    directory = tmp_path_factory.mktemp(f"sd{version}-layout")
    pipeline = _build_sd_layout_pipeline(version=version)
    pipeline.save_pretrained(directory, safe_serialization=True)
    return pipeline, directory


@pytest.fixture(scope="module")
def sd_layout(tmp_path_factory):
    return _saved(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def sd2_layout(tmp_path_factory):
    return _saved(tmp_path_factory, 2)


def _reload(path, config_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None, requires_safety_checker=False)


def _assert_same_weights(original, reloaded, dtype):
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(original, name).state_dict(), getattr(reloaded, name).state_dict()
        assert sorted(got) == sorted(want), name
        for key, tensor in want.items():
            expected = tensor.to(dtype).to(torch.float32) if tensor.is_floating_point() else tensor
            assert torch.equal(got[key].to(expected.dtype), expected), f"{name}.{key}"


def test_round_trip_through_from_single_file_gives_the_same_weights(sd_layout, tmp_path):
    pipeline, config_dir = sd_layout
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline), dtype=torch.float32)
    _assert_same_weights(pipeline, _reload(path, config_dir), torch.float32)


def test_fp16_export_holds_the_weights_cast_to_fp16(sd_layout, tmp_path):
    from safetensors import safe_open

    pipeline, config_dir = sd_layout
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline))  # fp16 by default
    with safe_open(str(path), framework="pt") as f:
        names = f.keys()
        not_fp16 = {key for key in names if f.get_slice(key).get_dtype() != "F16"}
    assert not_fp16 == {"cond_stage_model.transformer.text_model.embeddings.position_ids"}  # integers
    _assert_same_weights(pipeline, _reload(path, config_dir), torch.float16)


def test_the_file_uses_the_original_layout_keys(sd_layout, tmp_path):
    """What A1111 and ComfyUI look for: SD 1.x prefixes, LDM block names, 1x1-conv VAE attention."""
    from safetensors import safe_open

    path = tmp_path / "subject.safetensors"
    save_single_file(sd_layout[0], path, family=for_pipeline(sd_layout[0]), dtype=torch.float32)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "cond_stage_model"}
        assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
        assert "model.diffusion_model.middle_block.0.in_layers.0.weight" in keys
        assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # UpBlock2D's upsampler
        assert "model.diffusion_model.output_blocks.5.2.conv.weight" in keys  # after an attention
        assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
        assert f.get_slice("first_stage_model.encoder.mid.attn_1.q.weight").get_shape()[2:] == [1, 1]


def test_metadata_lands_in_the_safetensors_header(sd_layout, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "subject.safetensors"
    metadata = {"dreambooth_job.identifier": "sks", "dreambooth_job.class_noun": "dog"}
    save_single_file(sd_layout[0], path, family=for_pipeline(sd_layout[0]), metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", **metadata}


def test_non_string_metadata_is_refused_and_nothing_is_written(sd_layout, tmp_path):
    path = tmp_path / "subject.safetensors"
    with pytest.raises(InvalidInputError, match="metadata"):
        save_single_file(sd_layout[0], path, family=for_pipeline(sd_layout[0]), metadata={"steps": 400})
    assert list(tmp_path.iterdir()) == []


def test_sd2_round_trip_writes_openclip_keys_and_gives_the_same_weights(sd2_layout, tmp_path):
    from safetensors import safe_open

    pipeline, config_dir = sd2_layout
    path = tmp_path / "subject.safetensors"
    save_single_file(pipeline, path, family=for_pipeline(pipeline), dtype=torch.float32)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert {key.split(".")[1] for key in keys if key.startswith("cond_stage_model.")} == {"model"}
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    _assert_same_weights(pipeline, _reload(path, config_dir), torch.float32)


def test_an_sd_pipeline_with_extra_unet_embeddings_is_refused_with_a_clear_error(tmp_path):
    pipeline = _build_sd_layout_pipeline()
    pipeline.unet.register_to_config(addition_embed_type="text_time")
    with pytest.raises(InvalidInputError, match="'text_time' embeddings, which the Stable Diffusion"):
        save_single_file(pipeline, tmp_path / "subject.safetensors", family=for_pipeline(pipeline))
    assert list(tmp_path.iterdir()) == []


def test_cast_state_dict_casts_floats_and_keeps_integer_buffers():
    state = {"w": torch.randn(3), "ids": torch.arange(3)}
    cast = cast_state_dict(state, "bf16")
    assert cast["w"].dtype == torch.bfloat16 and torch.equal(cast["w"], state["w"].to(torch.bfloat16))
    assert cast["ids"].dtype == torch.int64
    with pytest.raises(InvalidInputError, match="fp8"):
        cast_state_dict(state, "fp8")


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_pretrained_precision_loads_and_equals_the_cast_weights(sd_layout, tmp_path, precision, dtype):
    from diffusers import StableDiffusionPipeline

    pipeline = sd_layout[0]
    before = {key: tensor.clone() for key, tensor in pipeline.unet.state_dict().items()}
    save_pretrained_precision(pipeline, tmp_path / "model", precision)
    assert all(torch.equal(pipeline.unet.state_dict()[k], v) for k, v in before.items())  # still fp32
    assert not list((tmp_path / "model").rglob("*.partial"))
    text_config = json.loads((tmp_path / "model" / "text_encoder" / "config.json").read_text())
    assert text_config["dtype"] == str(dtype).removeprefix("torch.")  # transformers' record of it
    reloaded = StableDiffusionPipeline.from_pretrained(
        tmp_path / "model", torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    _assert_same_weights(pipeline, reloaded, dtype)


def test_a_failed_write_leaves_neither_the_file_nor_a_partial_one(tmp_path):
    from dreambooth_job.outputs.export.precision import write_atomically

    def write_then_fail(partial):
        with open(partial, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "subject.safetensors", write_then_fail)
    assert list(tmp_path.iterdir()) == []
