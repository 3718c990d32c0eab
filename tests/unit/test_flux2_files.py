"""FLUX.2 [klein]'s published files against the readers users load them with: the single file in
BFL's original layout (diffusers' `from_single_file` gives back the trained weights exactly), the
LoRA targets of each --lora-targets preset (both LoRA files hold every adapted module, and the
original-names file has the diffusers file's effect through diffusers' converter), and the key
rule ComfyUI's LoraLoader applies (every LoRA key names a weight of that single file)."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
from safetensors.torch import load_file

from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS, LORA_TARGET_PRESETS
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families.flux2 import Flux2Klein
from dreambooth_job.families.sd import StableDiffusion
from dreambooth_job.families.sdxl import StableDiffusionXL
from dreambooth_job.outputs import lora_writers
from dreambooth_job.outputs.export.single_file import save_single_file
from dreambooth_job.training import lora_adapters

FAMILY = Flux2Klein()


@pytest.fixture(scope="module")
def single_file(tiny_flux2_klein_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("klein-single") / "klein.safetensors"
    save_single_file(Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model), path, family=FAMILY,
                     dtype="fp32")
    return path


def test_the_single_file_gives_back_the_transformer_exactly(tiny_flux2_klein_model, single_file):
    original = load_file(single_file)
    # BFL's layout: no key prefix, q/k/v fused, RMS norms' `.scale`, what ComfyUI detects FLUX.2 by.
    assert "double_blocks.0.img_attn.qkv.weight" in original
    assert "single_blocks.0.norm.query_norm.scale" in original
    assert "double_stream_modulation_img.lin.weight" in original
    expected = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model).transformer.state_dict()
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
    assert converted.keys() == expected.keys()  # every key converts, none is left over
    loaded = Flux2Transformer2DModel.from_single_file(str(single_file), config=str(tiny_flux2_klein_model),
                                                      subfolder="transformer").state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_the_layout_holds_flux2_dev_guidance_embedder_too():
    """FLUX.2 [dev]'s transformer (one diffusers class with klein) adds `guidance_in`."""
    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux2_layout import FLUX2_LAYOUT

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)
    expected = transformer.state_dict()
    original = original_state(FLUX2_LAYOUT, expected, "test")
    assert "guidance_in.in_layer.weight" in original
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key], expected[key]) for key in expected)


def adapted(model_dir, preset: str):
    """The tiny klein with random adapters on `preset`'s modules (B random: a visible effect)."""
    pipe = Flux2KleinPipeline.from_pretrained(model_dir)
    targets = FAMILY.lora_format.targets(preset, pipe.transformer)
    lora_adapters.add_lora(pipe.transformer, target_modules=targets, rank=2, alpha=3)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return pipe


def transformer_output(transformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 16, 16, generator=generator)
    text = torch.randn(1, 8, 48, generator=generator)
    image_ids = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 16, 4, 4))
    with torch.no_grad():
        return transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.tensor([0.5]),
                           img_ids=image_ids, txt_ids=Flux2KleinPipeline._prepare_text_ids(text),
                           guidance=None, return_dict=False)[0]


@pytest.mark.parametrize("preset", LORA_TARGET_PRESETS)
def test_both_lora_files_hold_every_target_with_the_same_effect(tiny_flux2_klein_model, tmp_path, preset):
    trained = adapted(tiny_flux2_klein_model, preset)
    adapted_modules = {name for name, module in trained.transformer.named_modules()
                       if hasattr(module, "lora_A")}
    modules = FAMILY.lora_format.modules(trained)
    lora_writers.save_lora_diffusers(tmp_path / "diffusers", FAMILY, modules, metadata={})
    kohya = lora_writers.save_lora_kohya(tmp_path / "kohya.safetensors", FAMILY, modules, metadata={})
    in_diffusers = {key.removeprefix("transformer.").removesuffix(".lora_A.weight")
                    for key in load_file(tmp_path / "diffusers" / lora_writers.DIFFUSERS_WEIGHT_NAME)
                    if key.endswith(".lora_A.weight")}
    assert in_diffusers == adapted_modules
    # The kohya file read back through diffusers' converter: every adapted module, nothing else.
    state, _ = Flux2KleinPipeline.lora_state_dict(str(kohya), return_lora_metadata=True)
    assert {key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            for key in state if key.endswith(".lora_A.weight")} == adapted_modules
    if preset == "all":
        assert any(name.startswith("single_transformer_blocks.") for name in adapted_modules)
        assert "lora_unet_single_blocks_0_linear2.lora_down.weight" in load_file(kohya)
    if preset != "attention":
        assert "transformer_blocks.0.ff_context.linear_out" in adapted_modules

    outputs = []
    for path in (tmp_path / "diffusers", kohya):
        pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
        pipe.load_lora_weights(str(path))
        outputs.append(transformer_output(pipe.transformer))
    plain = transformer_output(Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model).transformer)
    assert not torch.allclose(outputs[0], plain)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_every_lora_key_names_a_weight_of_the_single_file(tiny_flux2_klein_model, single_file, tmp_path):
    """ComfyUI's LoraLoader (comfy/lora.py, `model_lora_keys_unet`) maps `lora_unet_<name>` to the
    model weight `diffusion_model.<key>.weight` whose `<key>` with `.` written `_` is `<name>`; the
    model's keys are the single file's (ComfyUI's "Load Diffusion Model" loads BFL's layout as is).
    So each adapted module of the original-names LoRA file must be a weight of our single file, and
    its update (up @ down) that weight's shape."""
    weights = {key.removesuffix(".weight").replace(".", "_"): tensor
               for key, tensor in load_file(single_file).items() if key.endswith(".weight")}
    trained = adapted(tiny_flux2_klein_model, "all")
    kohya = load_file(lora_writers.save_lora_kohya(tmp_path / "kohya.safetensors", FAMILY,
                                                   FAMILY.lora_format.modules(trained), metadata={}))
    names = {key.partition(".")[0] for key in kohya}
    assert len(kohya) == 3 * len(names)  # lora_down, lora_up, alpha: nothing ComfyUI would skip
    for name in names:
        assert name.startswith("lora_unet_")
        weight = weights[name.removeprefix("lora_unet_")]
        update = kohya[f"{name}.lora_up.weight"] @ kohya[f"{name}.lora_down.weight"]
        assert update.shape == weight.shape, name


def test_sd_and_sdxl_keep_their_default_targets():
    """--lora-targets attention is --lora-target-modules' default for the UNet families: the same
    adapters, so the same bitwise outputs as before the option existed."""
    for family in (StableDiffusion(), StableDiffusionXL()):
        assert tuple(family.lora_format.targets("attention", None)) == DEFAULT_LORA_TARGETS
        assert family.lora_format.text_encoder_targets == lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS
    assert FAMILY.lora_format.text_encoder_targets == ("q_proj", "k_proj", "v_proj", "o_proj")


def test_named_modules_replace_the_preset(tiny_flux2_klein_model):
    from dreambooth_job.families.lora_mode import denoiser_targets

    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    config = TrainConfig(instance_data="d", class_noun="dog", output="o", lora_targets="all")
    assert "to_qkv_mlp_proj" in denoiser_targets(config, FAMILY, pipe)
    named = TrainConfig(instance_data="d", class_noun="dog", output="o", lora_targets="all",
                        lora_target_modules=["to_q", "to_v"])
    assert denoiser_targets(named, FAMILY, pipe) == ["to_q", "to_v"]
