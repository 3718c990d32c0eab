"""SDXL LoRA in kohya's key format (lora_writers.save_lora_kohya with the SDXL family): the UNet's modules
under SDXL's original block names (`lora_unet_input_blocks_4_1_...`, as kohya trains SDXL on that
UNet), `lora_te1_`/`lora_te2_` for the two encoders, an `.alpha` per module. Checked against
diffusers' own kohya reader, on the tiny SDXL pipeline (loads like the diffusers-format file:
same adapted model) and on the real SDXL base architecture (meta device, names only).
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from helpers import perturb_lora_adapters  # noqa: E402

from dreambooth_job import families  # noqa: E402
from dreambooth_job.outputs import lora_writers  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402

RANK, ALPHA = 4, 8  # alpha != rank, so a loader that ignores alpha gets a different output
ENCODERS = ("text_encoder", "text_encoder_2")


def _load(path):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(path, torch_dtype=torch.float32, add_watermarker=False)


SDXL = next(f for f in families.FAMILIES if "StableDiffusionXLPipeline" in f.pipeline_classes)
# --lora-targets all: attention, feed-forward and the ResBlocks' convolutions (their names too).
UNET_TARGETS = SDXL.lora_format.target_presets["all"]


@pytest.fixture(scope="module")
def adapted(tiny_sdxl_model, tmp_path_factory):
    """The tiny SDXL pipeline with perturbed adapters on the UNet and both encoders, and its
    diffusers-format and kohya files."""
    torch.manual_seed(0)
    pipe = _load(tiny_sdxl_model)
    lora_adapters.add_lora(pipe.unet, pipe.text_encoder, rank=RANK, alpha=ALPHA, target_modules=UNET_TARGETS)
    lora_adapters.add_lora(None, pipe.text_encoder_2, rank=RANK, alpha=ALPHA)
    perturb_lora_adapters(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    out = tmp_path_factory.mktemp("sdxl-lora")
    modules = SDXL.lora_format.modules(pipe)
    diffusers_file = lora_writers.save_lora_diffusers(out, SDXL, modules)
    kohya_file = lora_writers.save_lora_kohya(out / "subject.safetensors", SDXL, modules,
                                              metadata={"identifier": "sks"})
    return pipe, diffusers_file, kohya_file


def test_kohya_sdxl_keys_name_the_original_unet_blocks_and_both_encoders(adapted):
    _, _, kohya_file = adapted
    state = safetensors_torch.load_file(kohya_file)
    keys = set(state)
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    unet_keys = {k for k in keys if k.startswith("lora_unet_")}
    assert not any(part in k for k in unet_keys for part in ("down_blocks", "mid_block", "up_blocks"))
    for key in ("lora_unet_input_blocks_3_1_transformer_blocks_1_attn1_to_q.lora_down.weight",
                "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0.lora_up.weight",
                "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k.alpha",
                "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight",  # ResBlock conv1
                "lora_unet_output_blocks_3_0_skip_connection.lora_up.weight",  # conv_shortcut
                "lora_te1_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight",
                "lora_te2_text_model_encoder_layers_0_self_attn_out_proj.alpha"):
        assert key in keys, key
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert len(alphas) == sum(k.endswith(".lora_down.weight") for k in keys)
    assert all(v.item() == ALPHA for v in alphas.values())
    with safetensors_torch.safe_open(kohya_file, framework="pt") as f:
        header = f.metadata()
    assert header["ss_base_model_version"] == "sdxl_base_v1-0" and header["identifier"] == "sks"


def test_diffusers_reads_the_kohya_file_as_the_diffusers_file(adapted):
    """diffusers' kohya reader (the SGM block remapping and key conversion A1111/ComfyUI follow)
    gives the same tensors, under the same modules, with the same alphas, as our diffusers file."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    pipe, diffusers_file, kohya_file = adapted
    from_kohya, alphas = StableDiffusionXLPipeline.lora_state_dict(str(kohya_file),
                                                                   unet_config=pipe.unet.config)
    expected = safetensors_torch.load_file(diffusers_file)

    def part(entries, name):
        return {k.removeprefix(f"{name}."): v for k, v in entries.items() if k.startswith(f"{name}.")}

    unet = convert_unet_state_dict_to_peft(part(from_kohya, "unet"))
    assert unet.keys() == part(expected, "unet").keys()
    for key, tensor in part(expected, "unet").items():
        assert torch.equal(unet[key], tensor), key
    for name in ENCODERS:
        encoder = convert_state_dict_to_peft(part(from_kohya, name))
        want = part(expected, name)
        def names(entries):
            return {k.removeprefix("text_model.") for k in entries}

        assert names(encoder) == names(want)
        for key, tensor in want.items():
            assert torch.equal(encoder.get(key, encoder.get(f"text_model.{key}")), tensor), f"{name}.{key}"
    assert alphas and set(alphas.values()) == {ALPHA}
    assert {k.split(".", 1)[0] for k in alphas} == {"unet", *ENCODERS}


def test_the_kohya_file_loads_on_the_base_as_the_adapted_pipeline(adapted, tiny_sdxl_model):
    """`pipe.load_lora_weights(kohya file)`, the user's call: the UNet and both encoders compute
    what the adapted ones did."""
    pipe, _, kohya_file = adapted
    fresh = _load(tiny_sdxl_model)
    before = _outputs(fresh)
    fresh.load_lora_weights(str(kohya_file))
    after, expected = _outputs(fresh), _outputs(pipe)
    for name in ("unet", *ENCODERS):
        assert not torch.allclose(after[name], before[name], atol=1e-3), name
        torch.testing.assert_close(after[name], expected[name], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def _outputs(pipe):
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(3))
    outputs = {"unet": _unet_output(pipe.unet)}
    for name in ENCODERS:
        outputs[name] = getattr(pipe, name)(ids, output_hidden_states=True).hidden_states[-2]
    return outputs


@torch.no_grad()
def _unet_output(unet):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 32, 32, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    pooled = torch.randn(1, 32, generator=generator)
    time_ids = torch.tensor([[300.0, 400.0, 0.0, 16.0, 256.0, 256.0]])
    return unet(latents, torch.tensor([500]), encoder_hidden_states=context,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample


def test_real_sdxl_unet_names_map_back_through_diffusers_kohya_reader():
    """SDXL base 1.0's UNet (bench/architectures.py's SDXL config, on the meta device) with adapters on its
    attention and ResBlock layers: every adapter's kohya name maps back, by diffusers' reader,
    onto the module it came from, and the names are kohya's SDXL ones."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict

    from dreambooth_job.bench.architectures import build_sdxl_models as build_models

    unet = build_models(device="meta")["unet"]
    lora_adapters.add_lora(unet, rank=RANK, alpha=ALPHA, target_modules=UNET_TARGETS)
    kohya = lora_writers.kohya_state_dict(SDXL, {"unet": unet})
    names = {k.split(".")[0] for k in kohya}
    assert "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_v" in names  # 10 layers deep
    assert "lora_unet_output_blocks_8_0_out_layers_3" in names  # last ResBlock's conv2
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(copy.copy(kohya), unet_config=unet.config)
    mapped = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
    assert mapped.keys() == get_peft_model_state_dict(unet).keys()
    assert len(alphas) == len(names) and set(alphas.values()) == {ALPHA}
