"""--lora-variant dora|lokr: the adapters train, their files load back with the adapted model's
effect (diffusers' load_lora_weights for DoRA; the kohya/LyCORIS file applied to the base weights
by hand, as ComfyUI's weight adapters compute it), merging folds in exactly what peft computes, a
DoRA run resumes bitwise, and what a family cannot hold is refused naming the option."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from dreambooth_job import families  # noqa: E402
from dreambooth_job.config import train_config as cfg  # noqa: E402
from dreambooth_job.config.choices import LORA_VARIANTS  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.families.lora_mode import check_variant  # noqa: E402
from dreambooth_job.outputs import lora_writers, weight_files  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402

SD = next(f for f in families.FAMILIES if "StableDiffusionPipeline" in f.pipeline_classes)
ALPHA = 8
TARGETS = lora_adapters.DEFAULT_UNET_TARGETS + lora_adapters.UNET_CONV_TARGETS  # linear and conv


def _load(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)


@torch.no_grad()
def _unet_output(pipe):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


def _perturb(module) -> None:
    """The adapters start equal to the base: give them seeded values that change the output
    (DoRA's magnitudes scaled around the base's norms, so that they stay positive)."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * noise)
            elif "lora_" in name or "lokr_" in name:
                param.copy_(noise * 0.1)


def _adapted(tiny_model, variant: str, rank: int):
    torch.manual_seed(0)
    pipe = _load(tiny_model)
    lora_adapters.add_lora(pipe.unet, rank=rank, alpha=ALPHA, target_modules=TARGETS, variant=variant)
    _perturb(pipe.unet)
    return pipe


def _adapted_layers(unet) -> dict:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: layer for name, layer in unet.named_modules() if isinstance(layer, BaseTunerLayer)}


def _merged_weights(unet) -> dict:
    """peft's own merge of each adapted layer: {module path: merged weight}."""
    merged = lora_adapters.merge_lora(copy.deepcopy(unet))
    return {name: merged.get_submodule(name).weight for name in _adapted_layers(unet)}


def _kohya_module(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")  # SD 1.x's kohya names: diffusers' module paths


def _comfy_dora(weight, state, module):
    """The LoRA + `weight_decompose` of ComfyUI's weight adapters for an output-axis `dora_scale`,
    as LyCORIS computes it: (W + alpha/rank * up @ down) * dora_scale / its row norms; and
    ComfyUI's own (comfy/weight_adapter/base.py since a8f63c0d), which divides by the base
    weight's row norms instead; and the ratio of the two norms."""
    up, down = state[f"{module}.lora_up.weight"], state[f"{module}.lora_down.weight"]
    scale = state[f"{module}.alpha"].item() / down.shape[0]
    diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    calc = weight + scale * diff
    dora_scale = state[f"{module}.dora_scale"]
    assert dora_scale.shape[0] == weight.shape[0] and dora_scale.dim() == weight.dim()

    def norms(w):
        return w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))

    return calc * dora_scale / norms(calc), calc * dora_scale / norms(weight), norms(calc) / norms(weight)


def _comfy_lokr(weight, state, module):
    """ComfyUI's LoKrAdapter.calculate_weight at strength 1."""
    w1 = state.get(f"{module}.lokr_w1")
    w2 = state.get(f"{module}.lokr_w2")
    alpha, dim = 1.0, None
    if w2 is None:
        w2_a, w2_b = state[f"{module}.lokr_w2_a"], state[f"{module}.lokr_w2_b"]
        dim = w2_b.shape[0]
        w2 = w2_a @ w2_b
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    if dim is not None:
        alpha = state[f"{module}.alpha"].item() / dim
    return weight + alpha * torch.kron(w1, w2).reshape(weight.shape)


def test_dora_files_load_back_as_the_adapted_model(tiny_model, tmp_path):
    pipe = _adapted(tiny_model, "dora", rank=4)
    adapted = _unet_output(pipe)
    assert not torch.allclose(adapted, _unet_output(_load(tiny_model)), atol=1e-4)
    modules = SD.lora_format.modules(pipe)
    lora_writers.save_lora_diffusers(tmp_path, SD, modules)
    kohya_file = lora_writers.save_lora_kohya(tmp_path / "subject.safetensors", SD, modules)

    fresh = _load(tiny_model)
    fresh.load_lora_weights(tmp_path, weight_name=lora_writers.DIFFUSERS_WEIGHT_NAME)
    assert any("lora_magnitude_vector" in name for name, _ in fresh.unet.named_parameters())
    torch.testing.assert_close(_unet_output(fresh), adapted, rtol=1e-4, atol=1e-5)

    state = safetensors_torch.load_file(kohya_file)
    base = _load(tiny_model).unet
    merged = _merged_weights(pipe.unet)
    for path, expected in merged.items():
        exact, comfy, ratio = _comfy_dora(base.get_submodule(path).weight, state, _kohya_module(path))
        torch.testing.assert_close(exact, expected, rtol=1e-4, atol=1e-5)
        # ComfyUI's output-axis branch divides by the base's norms, not the adapted weight's: each
        # row off by ||W + dW|| / ||W|| (1 + the update's share of the row's norm).
        torch.testing.assert_close(comfy, expected * ratio, rtol=1e-4, atol=1e-5)
    header = safetensors_torch.safe_open(kohya_file, "pt").metadata()
    assert header["ss_network_module"] == "lycoris.kohya" and '"dora_wd"' in header["ss_network_args"]


@pytest.mark.parametrize("rank", [2, 16], ids=["low-rank-w2", "whole-w2"])
def test_lokr_kohya_file_applies_as_comfyui_does(tiny_model, tmp_path, rank):
    pipe = _adapted(tiny_model, "lokr", rank=rank)
    kohya_file = lora_writers.save_lora_kohya(tmp_path / "subject.safetensors", SD,
                                              SD.lora_format.modules(pipe))
    state = safetensors_torch.load_file(kohya_file)
    factored = {key.rpartition(".")[2] for key in state}
    assert ("lokr_w2_a" in factored) == (rank == 2) and "lokr_w1" in factored
    base = _load(tiny_model).unet
    merged = _merged_weights(pipe.unet)
    assert any(w.dim() == 4 for w in merged.values()), "a convolution is among the adapted layers"
    for path, expected in merged.items():
        assert not torch.allclose(expected, base.get_submodule(path).weight)
        applied = _comfy_lokr(base.get_submodule(path).weight, state, _kohya_module(path))
        torch.testing.assert_close(applied, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["dora", "lokr"])
def test_merge_and_single_file_are_the_adapted_model(tiny_model, tmp_path, variant):
    pipe = _adapted(tiny_model, variant, rank=4)
    adapted = _unet_output(pipe)
    settings = weight_files.OutputSettings(subject_id="dog", precision="fp32", single_file=True,
                                           lora_merge=True)
    written = weight_files.write_outputs(pipe, tmp_path, settings)
    names = {f.path for f in written.files}
    assert ("lora/pytorch_lora_weights.safetensors" in names) == (variant == "dora")
    assert "lora/dog.safetensors" in names and "dog.safetensors" in names
    assert lora_adapters.has_lora(pipe.unet), "the live pipeline keeps its adapters"
    torch.testing.assert_close(_unet_output(_load(tmp_path / "model")), adapted, rtol=1e-4, atol=1e-5)


def _trainer(**overrides):
    from dreambooth_job.bench.architectures import build_pipeline
    from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
    from dreambooth_job.training.trainer import Trainer

    settings = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3,
                        warmup=0, prior_preservation=True, seed=0)
    config = bench_config(settings, Variant("test", {"train_mode": "lora", "lora_rank": 4,
                                                     "learning_rate": 1e-2, **overrides}))
    trainer = Trainer(config, build_pipeline("tiny", seed=0), instance_images=_images(settings, 0),
                      instance_prompt="a sks dog", class_images=_images(settings, 1000),
                      class_prompt="a dog")
    trainer.setup()
    return trainer


def _trainable(module) -> dict:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant, kind", [("dora", "lora_magnitude_vector"), ("lokr", "lokr_w2")])
def test_each_variant_trains_its_own_adapters(variant, kind):
    torch.set_num_threads(1)
    t = _trainer(lora_variant=variant)
    before = _trainable(t.models.denoiser)
    assert any(kind in name for name in before)
    frozen = {name: p.detach().clone() for name, p in t.models.denoiser.named_parameters()
              if not p.requires_grad}
    t.train(2)
    after = _trainable(t.models.denoiser)
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert any(kind in name for name in moved)
    assert all(torch.equal(p, frozen[name]) for name, p in t.models.denoiser.named_parameters()
               if not p.requires_grad)


def test_a_dora_run_resumes_bitwise(tmp_path):
    torch.set_num_threads(1)
    t = _trainer(lora_variant="dora")
    t.train(2)
    t.save_state(tmp_path / "state")
    resumed = _trainer(lora_variant="dora")
    resumed.load_state(tmp_path / "state", 2)
    t.train(1)
    resumed.train(1)
    ends = _trainable(t.models.denoiser), _trainable(resumed.models.denoiser)
    assert ends[0].keys() == ends[1].keys()
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    # A plain LoRA run cannot take the DoRA checkpoint (nor the other way round).
    with pytest.raises(InvalidInputError, match="other trainable parameters"):
        _trainer().load_state(tmp_path / "state", 2)


@pytest.mark.parametrize("family, variant", [(f, v) for f in families.FAMILIES for v in LORA_VARIANTS
                                             if v not in f.lora_format.adapter_variants],
                         ids=lambda x: getattr(x, "name", x))
def test_families_refuse_what_their_files_cannot_hold_naming_the_option(family, variant):
    with pytest.raises(InvalidInputError, match=f"^--lora-variant {variant}: {family.name}'s") as error:
        check_variant(variant, family)
    assert error.value.exit_code == 2 and "\n" not in str(error.value)
    check_variant("lora", family)


def test_the_base_models_family_is_checked_when_it_is_loaded(tiny_flux2_klein_model):
    """load_model's check, before class images and training: FLUX.2 [klein] refuses LoKr."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    with pytest.raises(InvalidInputError, match="^--lora-variant lokr: flux2-klein's"):
        weight_files.check_exportable(pipe, single_file=False, lora_variant="lokr")
    weight_files.check_exportable(pipe, single_file=False, lora_variant="dora")


def test_bad_variant_values_are_refused_naming_the_option(tiny_model):
    with pytest.raises(InvalidInputError, match="--lora-variant"):
        cfg.TrainConfig(lora_variant="loha")
    assert cfg.TrainConfig().lora_variant == "lora"
    with pytest.raises(InvalidInputError, match="^--lora-variant dora with --train-text-encoder"):
        cfg.TrainConfig(train_mode="lora", lora_variant="dora", train_text_encoder=True)
    cfg.TrainConfig(train_mode="lora", lora_variant="lokr", train_text_encoder=True)
    with pytest.raises(InvalidInputError, match="^--lora-dropout applies"):
        cfg.TrainConfig(train_mode="lora", lora_variant="lokr", lora_dropout=0.1)
    with pytest.raises(InvalidInputError, match="^--lora-variant dora .*--base-precision nf4"):
        cfg.TrainConfig(train_mode="lora", lora_variant="dora", base_precision="nf4")
    pipe = _load(tiny_model)
    with pytest.raises(InvalidInputError, match="--lora-dropout"):
        lora_adapters.add_lora(pipe.unet, rank=4, dropout=0.1, variant="lokr")


@pytest.mark.parametrize("variant", ["dora", "lokr"])
def test_sdxl_variant_keys_name_the_modules_as_its_lora_keys_do(tiny_sdxl_model, tmp_path, variant):
    """SDXL's kohya keys name the UNet's original blocks and both encoders (`lora_te1_`,
    `lora_te2_`); DoRA's and LoKr's tensors sit under the same module names as plain LoRA's, one
    set per adapted layer."""
    from diffusers import StableDiffusionXLPipeline

    sdxl = next(f for f in families.FAMILIES if "StableDiffusionXLPipeline" in f.pipeline_classes)

    def kohya_modules(kind: str) -> set[str]:
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model, torch_dtype=torch.float32)
        lora_adapters.add_lora(pipe.unet, pipe.text_encoder, rank=4, variant=kind)
        lora_adapters.add_lora(None, pipe.text_encoder_2, rank=4, variant=kind)
        state = lora_writers.kohya_state_dict(sdxl, sdxl.lora_format.modules(pipe))
        return state, {key.split(".")[0] for key in state}

    _, plain = kohya_modules("lora")
    state, modules = kohya_modules(variant)
    assert modules == plain
    prefixes = ("lora_unet_input_blocks_", "lora_te1_", "lora_te2_")
    assert all(any(m.startswith(p) for m in modules) for p in prefixes)
    suffix = "dora_scale" if variant == "dora" else "lokr_w1"
    assert {key.split(".")[0] for key in state if key.endswith(suffix)} == plain


def test_flux2_dora_files_load_back_and_fuse_as_the_original_layout(tiny_flux2_klein_model, tmp_path):
    """FLUX.2 [klein] with DoRA on attention (q, k, v fused as `img_attn.qkv` in the kohya file):
    diffusers' loader rebuilds the adapted transformer; the kohya file applied to the original
    layout's base weights (LyCORIS's formula) gives peft's merged weights in that layout."""
    from diffusers import Flux2KleinPipeline

    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux2_layout import FLUX2_LAYOUT

    flux2 = next(f for f in families.FAMILIES if f.name == "flux2-klein")
    pipe = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    lora_adapters.add_lora(pipe.transformer, rank=2, alpha=3, variant="dora",
                           target_modules=flux2.lora_format.targets("attention", pipe.transformer))
    _perturb(pipe.transformer)
    modules = flux2.lora_format.modules(pipe)
    lora_writers.save_lora_diffusers(tmp_path, flux2, modules)
    kohya_file = lora_writers.save_lora_kohya(tmp_path / "subject.safetensors", flux2, modules)

    fresh = Flux2KleinPipeline.from_pretrained(tiny_flux2_klein_model)
    fresh.load_lora_weights(str(tmp_path), weight_name=lora_writers.DIFFUSERS_WEIGHT_NAME)
    merged = lora_adapters.merge_lora(copy.deepcopy(pipe.transformer))
    for a, b in zip(_flux2_outputs(fresh.transformer), _flux2_outputs(merged), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    state = safetensors_torch.load_file(kohya_file)
    expected = original_state(FLUX2_LAYOUT, merged.state_dict(), "test")
    base = original_state(FLUX2_LAYOUT, Flux2KleinPipeline.from_pretrained(
        tiny_flux2_klein_model).transformer.state_dict(), "test")
    checked = []
    for key, weight in base.items():
        module = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        if f"{module}.dora_scale" in state:
            exact, _, _ = _comfy_dora(weight, state, module)
            torch.testing.assert_close(exact, expected[key], rtol=1e-4, atol=1e-5)
            checked.append(key)
    assert any(key.endswith("img_attn.qkv.weight") for key in checked)
    assert len(checked) == len({k.split(".")[0] for k in state})


def _merge_loaded(module):
    """A module with adapters loaded by diffusers (named `default_0`) merged into plain layers."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    recurse_remove_peft_layers(module)
    return module


def _flux2_outputs(transformer):
    from diffusers import Flux2KleinPipeline

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 16, 16, generator=generator)
    text = torch.randn(1, 8, 48, generator=generator)
    with torch.no_grad():
        return transformer(hidden_states=tokens, encoder_hidden_states=text, timestep=torch.tensor([0.5]),
                           img_ids=Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 16, 4, 4)),
                           txt_ids=Flux2KleinPipeline._prepare_text_ids(text), guidance=None,
                           return_dict=False)


def test_flux1_dora_files_load_back_and_fuse_as_the_original_layout(tiny_flux1_model, tmp_path):
    """FLUX.1 with DoRA on a double-stream block's attention and a single-stream block's q/k/v
    (fused with the unadapted MLP input as `linear1`): diffusers' loader rebuilds the adapted
    transformer; the kohya file applied by hand gives peft's merged weights in the original
    layout. (CLIP-L's DoRA: refused with --train-text-encoder, test_bad_variant_values_...)"""
    from diffusers import FluxPipeline

    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT

    flux1 = next(f for f in families.FAMILIES if f.name == "flux1")
    pipe = FluxPipeline.from_pretrained(tiny_flux1_model)
    targets = [f"transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0")]
    targets += [f"single_transformer_blocks.0.attn.{m}" for m in ("to_q", "to_k", "to_v")]
    lora_adapters.add_lora(pipe.transformer, rank=2, alpha=3, variant="dora", target_modules=targets)
    _perturb(pipe.transformer)
    modules = flux1.lora_format.modules(pipe)
    lora_writers.save_lora_diffusers(tmp_path, flux1, modules)
    kohya_file = lora_writers.save_lora_kohya(tmp_path / "subject.safetensors", flux1, modules)

    fresh = FluxPipeline.from_pretrained(tiny_flux1_model)
    fresh.load_lora_weights(str(tmp_path), weight_name=lora_writers.DIFFUSERS_WEIGHT_NAME)
    merged = lora_adapters.merge_lora(copy.deepcopy(pipe.transformer)).state_dict()
    loaded = _merge_loaded(fresh.transformer).state_dict()
    assert merged.keys() == loaded.keys()
    for key in merged:
        torch.testing.assert_close(loaded[key], merged[key], rtol=1e-4, atol=1e-5)

    state = safetensors_torch.load_file(kohya_file)
    base = original_state(FLUX1_LAYOUT, FluxPipeline.from_pretrained(
        tiny_flux1_model).transformer.state_dict(), "test")
    expected = original_state(FLUX1_LAYOUT, merged, "test")
    checked = []
    for key, weight in base.items():
        module = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
        if f"{module}.dora_scale" in state:
            exact, _, _ = _comfy_dora(weight, state, module)
            torch.testing.assert_close(exact, expected[key], rtol=1e-4, atol=1e-5)
            checked.append(module)
    assert {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"} <= set(checked)
    assert len(checked) == len({k.split(".")[0] for k in state})
