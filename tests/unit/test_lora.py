"""LoRA adapters and their files: what diffusers (and so A1111/ComfyUI, through kohya's keys) load
back is the adapted model we trained, and merging folds in exactly base + alpha/rank * B @ A."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from helpers import perturb_lora_adapters  # noqa: E402

from dreambooth_job import families  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.outputs import lora_writers  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402

RANK, ALPHA = 4, 8  # alpha != rank, so a loader that ignores alpha gets a different output
TARGETS = {"attention": lora_adapters.DEFAULT_UNET_TARGETS,
           "attention+conv": lora_adapters.DEFAULT_UNET_TARGETS + lora_adapters.UNET_CONV_TARGETS,
           # --lora-targets all: attention, feed-forward and convolutions, in both files.
           "all": next(f for f in families.FAMILIES if f.name == "sd").lora_format.target_presets["all"]}
METADATA = {"base_model_fingerprint": "ab" * 32, "identifier": "sks", "class_noun": "dog", "steps": "400"}


def _load(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)




def _inputs():
    generator = torch.Generator().manual_seed(7)
    return (torch.randn(1, 4, 32, 32, generator=generator), torch.tensor([500]),
            torch.randn(1, 77, 32, generator=generator),
            torch.randint(0, 49406, (1, 77), generator=generator))


@torch.no_grad()
def _outputs(pipe):
    latents, timestep, context, token_ids = _inputs()
    return (pipe.unet(latents, timestep, encoder_hidden_states=context).sample,
            pipe.text_encoder(token_ids)[0])


def _transformers_takes_adapters() -> bool:
    from transformers.integrations.peft import MIN_PEFT_VERSION
    from transformers.utils.peft_utils import check_peft_version

    try:
        check_peft_version(MIN_PEFT_VERSION)
    except ValueError:
        return False
    return True


def _load_lora(pipe, path):
    """`pipe.load_lora_weights(path)`. Where transformers refuses the installed peft (transformers
    5.x wants peft >= 0.22, newer than any published here), the same steps with the text encoder's
    adapter injected by peft itself: diffusers' key conversion, alphas and LoraConfig all the same."""
    if _transformers_takes_adapters():
        pipe.load_lora_weights(path)
        return
    from diffusers.loaders.lora_base import _create_lora_config
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    state, alphas, metadata = pipe.lora_state_dict(str(path), return_lora_metadata=True)
    pipe.load_lora_into_unet(state, network_alphas=alphas, unet=pipe.unet, metadata=metadata, _pipeline=pipe)

    def text_encoder_part(entries):
        return None if entries is None else {
            k.removeprefix("text_encoder."): v for k, v in entries.items() if k.startswith("text_encoder.")}

    tensors = convert_state_dict_to_peft(convert_state_dict_to_diffusers(text_encoder_part(state)))
    tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    alphas = text_encoder_part(alphas)
    if alphas:
        alphas = {k.removeprefix("text_model."): v for k, v in alphas.items()}
    ranks = {k: v.shape[1] for k, v in tensors.items() if k.endswith("lora_B.weight")}
    config = _create_lora_config(tensors, alphas, text_encoder_part(metadata), ranks, is_unet=False)
    inject_adapter_in_model(config, pipe.text_encoder)
    result = set_peft_model_state_dict(pipe.text_encoder, tensors)
    assert not result.unexpected_keys


SD = next(f for f in families.FAMILIES if "StableDiffusionPipeline" in f.pipeline_classes)


def modules(pipe) -> dict:
    """The modules the SD family's LoRA files are written from."""
    return SD.lora_format.modules(pipe)


@pytest.fixture(scope="module", params=list(TARGETS))
def adapted(request, tiny_model, tmp_path_factory):
    """The tiny pipeline with perturbed adapters on UNet and text encoder, and its files."""
    torch.manual_seed(0)
    pipe = _load(tiny_model)
    base_unet = copy.deepcopy(pipe.unet)
    lora_adapters.add_lora(pipe.unet, pipe.text_encoder, rank=RANK, alpha=ALPHA,
                           target_modules=TARGETS[request.param])
    perturb_lora_adapters(pipe.unet, pipe.text_encoder)
    out = tmp_path_factory.mktemp("lora")
    files = {}
    for precision in ("fp32", "fp16"):
        files[precision] = (
            lora_writers.save_lora_diffusers(out / precision, SD, modules(pipe),
                                             dtype=precision, metadata=METADATA),
            lora_writers.save_lora_kohya(out / precision / "subject.safetensors", SD, modules(pipe),
                                         dtype=precision, metadata=METADATA))
    return pipe, base_unet, files, request.param


def test_only_adapters_train(adapted):
    pipe, _, _, targets = adapted
    for module, names in ((pipe.unet, TARGETS[targets]),
                          (pipe.text_encoder, lora_adapters.DEFAULT_TEXT_ENCODER_TARGETS)):
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
        assert sum(p.numel() for p in lora_adapters.lora_parameters(module)) == \
            lora_adapters.lora_parameter_count(_without_adapters(module), RANK, names)


def _without_adapters(module):
    return lora_adapters.merge_lora(copy.deepcopy(module))


def test_files_are_small(adapted, tiny_model):
    pipe, base_unet, files, targets = adapted
    unet_bytes = sum(p.numel() * 4 for p in base_unet.parameters())
    for precision, (diffusers_file, kohya_file) in files.items():
        for path in (diffusers_file, kohya_file):
            size = path.stat().st_size
            print(f"{targets} {precision} {path.name}: {size} bytes; UNet fp32 {unet_bytes} bytes")
            assert size < unet_bytes / 10
    assert diffusers_file.name == "pytorch_lora_weights.safetensors"
    assert not list(diffusers_file.parent.glob(".*partial"))


def test_diffusers_file_loads_on_the_base(adapted, tiny_model):
    pipe, _, files, _ = adapted
    fresh = _load(tiny_model)
    base_unet_out, base_text_out = _outputs(fresh)
    _load_lora(fresh, files["fp32"][0].parent)
    unet_out, text_out = _outputs(fresh)
    expected_unet, expected_text = _outputs(pipe)
    assert not torch.allclose(unet_out, base_unet_out, atol=1e-3)
    assert not torch.allclose(text_out, base_text_out, atol=1e-3)
    torch.testing.assert_close(unet_out, expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_out, expected_text, rtol=1e-4, atol=1e-5)


def test_kohya_file_loads_like_the_diffusers_file(adapted, tiny_model):
    """diffusers reads kohya files with the key mapping A1111/ComfyUI follow: same keys, same alphas,
    same model."""
    pipe, _, files, _ = adapted
    kohya_file = files["fp32"][1]
    keys = safetensors_torch.load_file(kohya_file).keys()
    assert keys and all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert sum(k.endswith(".alpha") for k in keys) == sum(k.endswith(".lora_down.weight") for k in keys)
    # kohya's names: the module's dotted path with `_`, and CLIP's `text_model` kept.
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj.alpha" in keys
    fresh = _load(tiny_model)
    _load_lora(fresh, kohya_file)
    unet_out, text_out = _outputs(fresh)
    expected_unet, expected_text = _outputs(pipe)
    torch.testing.assert_close(unet_out, expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_out, expected_text, rtol=1e-4, atol=1e-5)


def test_unet_file_loads_with_load_lora_weights(tiny_model, tmp_path):
    """The user's own call, on a UNet-only adapter (the default without --train-text-encoder)."""
    pipe = _load(tiny_model)
    lora_adapters.add_lora(pipe.unet, rank=RANK, alpha=ALPHA)
    perturb_lora_adapters(pipe.unet)
    lora_writers.save_lora_diffusers(tmp_path / "lora", SD, modules(pipe), dtype="fp32", metadata=METADATA)
    lora_writers.save_lora_kohya(tmp_path / "subject.safetensors", SD, modules(pipe), dtype="fp32",
                                 metadata=METADATA)
    expected = _outputs_of(pipe.unet)
    for path in (tmp_path / "lora", tmp_path / "subject.safetensors"):
        fresh = _load(tiny_model)
        fresh.load_lora_weights(str(path))
        torch.testing.assert_close(_outputs_of(fresh.unet), expected, rtol=1e-4, atol=1e-5)


def test_kohya_alpha_tensors_hold_alpha(adapted):
    _, _, files, _ = adapted
    state = safetensors_torch.load_file(files["fp32"][1])
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    assert alphas and all(v.item() == ALPHA for v in alphas.values())


def test_merged_weights_are_base_plus_scaled_product(adapted):
    pipe, base_unet, _, _ = adapted
    adapters = {name: (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
                for name, layer in pipe.unet.named_modules() if hasattr(layer, "lora_A")}
    merged = lora_adapters.merge_lora(copy.deepcopy(pipe.unet))
    assert not lora_adapters.has_lora(merged)
    base, result = dict(base_unet.named_modules()), dict(merged.named_modules())
    assert adapters
    for name, (down, up) in adapters.items():
        weight = base[name].weight
        product = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
        torch.testing.assert_close(result[name].weight, weight + ALPHA / RANK * product, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_outputs_of(merged), _outputs_of(pipe.unet), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def _outputs_of(unet):
    latents, timestep, context, _ = _inputs()
    return unet(latents, timestep, encoder_hidden_states=context).sample


def test_metadata_round_trip(adapted):
    _, _, files, _ = adapted
    for path in files["fp32"]:
        with safetensors_torch.safe_open(path, framework="pt") as f:
            header = f.metadata()
        assert {k: header[k] for k in METADATA} == METADATA
        assert (header["lora_rank"], header["lora_alpha"]) == (str(RANK), str(ALPHA))


def test_fp16_files_hold_the_fp32_weights_cast(adapted):
    _, _, files, _ = adapted
    for fp32_path, fp16_path in zip(files["fp32"], files["fp16"]):
        full, half = safetensors_torch.load_file(fp32_path), safetensors_torch.load_file(fp16_path)
        assert full.keys() == half.keys()
        for key, value in half.items():
            assert value.dtype == torch.float16 and full[key].dtype == torch.float32
            assert torch.equal(value, full[key].to(torch.float16)), key


def test_unknown_target_is_a_one_line_error(tiny_model):
    pipe = _load(tiny_model)
    with pytest.raises(InvalidInputError, match="'to_qq' names no linear or convolution layer of the"):
        lora_adapters.add_lora(pipe.unet, target_modules=("to_q", "to_qq"))


def test_metadata_must_be_strings(adapted, tmp_path):
    pipe = adapted[0]
    with pytest.raises(TypeError, match="'steps'"):
        lora_writers.save_lora_kohya(tmp_path / "x.safetensors", SD, modules(pipe), metadata={"steps": 400})
    with pytest.raises(ValueError, match="'format'"):
        lora_writers.save_lora_diffusers(tmp_path, SD, modules(pipe), metadata={"format": "x"})
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora_writers.save_lora_kohya(tmp_path / "x.safetensors", SD, {"unet": copy.deepcopy(adapted[1])})
    assert not list(tmp_path.iterdir())


def test_merged_pipeline_saves_and_reloads_as_the_adapted_one(adapted, tmp_path):
    """--lora-merge: the merged modules are plain ones again; the saved pipeline is the adapted model."""
    pipe, _, _, _ = adapted
    merged = copy.deepcopy(pipe)
    lora_adapters.merge_lora(merged.unet)
    lora_adapters.merge_lora(merged.text_encoder)
    assert not any("lora_" in name for name, _ in merged.unet.named_parameters())
    assert not any("lora_" in name for name, _ in merged.text_encoder.named_parameters())
    merged.save_pretrained(tmp_path / "model", safe_serialization=True)
    reloaded_unet, reloaded_text = _outputs(_load(tmp_path / "model"))
    expected_unet, expected_text = _outputs(pipe)
    torch.testing.assert_close(reloaded_unet, expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reloaded_text, expected_text, rtol=1e-4, atol=1e-5)
