"""The FLUX.1 family against FluxPipeline's own computations: detection, prompt embeddings,
latents, the packed transformer call with the distilled guidance, the initial noise, the
rectified-flow objective against a hand computation, and both LoRA files."""

from __future__ import annotations

import pytest
import torch

from dreambooth_job import families
from dreambooth_job.families.flux1 import TRAINING_GUIDANCE, Flux1
from dreambooth_job.families.objective import FlowMatchingObjective

FAMILY = Flux1()


@pytest.fixture(scope="module")
def pipeline(tiny_flux1_model):
    path = str(tiny_flux1_model)
    return families.detect(path).load_pipeline(path, "/nonexistent")


def embed(pipeline, prompt: str, batch: int = 1):
    with torch.no_grad():
        return FAMILY.encode_prompt(FAMILY.text_encoders(pipeline), FAMILY.tokenize(pipeline, prompt),
                                    "cpu").expand(batch)


def test_a_flux1_pipeline_is_detected_from_model_index(tiny_flux1_model, pipeline):
    assert isinstance(families.detect(str(tiny_flux1_model)), Flux1)
    assert isinstance(families.detect_local(str(tiny_flux1_model)), Flux1)
    assert isinstance(families.for_pipeline(pipeline), Flux1)


def test_prompt_embeddings_are_the_pipelines(pipeline):
    prompt = "a photo of sks dog"
    ours = embed(pipeline, prompt)
    with torch.no_grad():
        theirs, pooled, text_ids = pipeline.encode_prompt(prompt, prompt_2=None, device="cpu")
    assert ours.hidden_states.shape == theirs.shape == (1, 512, 24)
    assert torch.equal(ours.hidden_states, theirs) and torch.equal(ours.pooled, pooled)
    conditioning = FAMILY.denoiser_conditioning(ours, torch.float32)
    assert torch.equal(conditioning["txt_ids"], text_ids)
    assert torch.equal(conditioning["pooled_projections"], pooled)


def test_the_saved_t5_tokenizer_tells_prompts_apart(pipeline):
    """The tiny T5 Unigram survives save_pretrained: words are pieces, padding is id 0, </s> is 1."""
    _, t5 = FAMILY.tokenize(pipeline, "a photo of sks dog")
    _, other = FAMILY.tokenize(pipeline, "a red cube")
    assert t5.shape == (1, 512) and int((t5 != 0).sum()) == 6 and t5[0, 5] == 1
    assert not torch.equal(t5, other)
    assert pipeline.tokenizer_2.decode(t5[0], skip_special_tokens=True) == "a photo of sks dog"


def test_latents_are_shifted_and_scaled_as_the_pipelines(pipeline):
    """FluxImg2ImgPipeline's `_encode_vae_image` is the pipelines' own (sample - shift) x scale."""
    from diffusers import FluxImg2ImgPipeline

    img2img = FluxImg2ImgPipeline(**pipeline.components)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        sample = pipeline.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(4))
        expected = img2img._encode_vae_image(pixels, torch.Generator().manual_seed(4))
    latents = FAMILY.encode_latents(pipeline.vae, sample)
    assert latents.shape == (1, 4, 16, 16)
    assert torch.equal(latents, expected)
    config = pipeline.vae.config
    assert torch.equal(latents, (sample - config.shift_factor) * config.scaling_factor)


def transformer_call(transformer, noisy, timesteps, embeddings, guidance, vae_scale_factor=2):
    """FluxPipeline's own denoising step on latents of the VAE's layout: packed, then unpacked."""
    from diffusers import FluxPipeline

    batch, channels, height, width = noisy.shape
    with torch.no_grad():
        tokens = transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, batch, channels, height, width),
            timestep=timesteps / 1000, guidance=guidance, pooled_projections=embeddings.pooled,
            encoder_hidden_states=embeddings.hidden_states,
            txt_ids=torch.zeros(embeddings.hidden_states.shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu",
                                                           noisy.dtype),
            return_dict=False)[0]
    return FluxPipeline._unpack_latents(tokens, height * vae_scale_factor, width * vae_scale_factor,
                                        vae_scale_factor)


def test_predict_is_the_pipelines_transformer_call_with_the_distilled_guidance(pipeline):
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([250.0, 900.0])
    embeddings = embed(pipeline, "a dog", 2)
    with torch.no_grad():
        ours = FAMILY.predict(pipeline.transformer, noisy, timesteps,
                              FAMILY.denoiser_conditioning(embeddings, torch.float32))
    assert pipeline.transformer.config.guidance_embeds and TRAINING_GUIDANCE == 3.5
    expected = transformer_call(pipeline.transformer, noisy, timesteps, embeddings,
                                torch.full((2,), 3.5), pipeline.vae_scale_factor)
    assert ours.shape == noisy.shape and torch.equal(ours, expected)
    # The guidance embedding is live: another value gives another velocity.
    assert not torch.allclose(ours, transformer_call(pipeline.transformer, noisy, timesteps,
                                                     embeddings, torch.full((2,), 1.0)))


def test_a_transformer_without_guidance_embedding_gets_none(pipeline):
    """FLUX.1 [schnell] is a FluxPipeline too; its transformer takes no guidance."""
    from diffusers import FluxTransformer2DModel

    schnell = FluxTransformer2DModel.from_config({**pipeline.transformer.config, "guidance_embeds": False})
    noisy = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    embeddings = embed(pipeline, "a dog")
    with torch.no_grad():
        ours = FAMILY.predict(schnell, noisy, torch.tensor([500.0]),
                              FAMILY.denoiser_conditioning(embeddings, torch.float32))
    assert torch.equal(ours, transformer_call(schnell, noisy, torch.tensor([500.0]), embeddings, None))


def test_initial_noise_is_the_pipelines_own_draw(pipeline):
    noise = FAMILY.initial_noise(pipeline, 32, torch.Generator().manual_seed(0))
    theirs, _ = pipeline.prepare_latents(1, 4, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(0))
    assert noise.shape == (64, 16)  # 32 px: 16 latent pixels, 8x8 tokens of 4 channels x 2x2
    assert torch.equal(noise[None], theirs)
    images = FAMILY.generate(pipeline, ["a dog"], latents=noise[None], resolution=32,
                             num_inference_steps=2, guidance_scale=3.5)
    assert images[0].size == (32, 32)


def test_the_objective_is_rectified_flow_by_hand(pipeline):
    """The trainer's draw with `--weighting_scheme none`: u uniform, the timestep
    `timesteps[int(u * 1000)]` of FLUX.1's scheduler (dynamic shifting: unshifted for training,
    1000 - int(1000 u)), sigma = t / 1000, x_t = (1 - sigma) x0 + sigma noise, target noise - x0."""
    objective = FAMILY.training_objective(pipeline)
    assert isinstance(objective, FlowMatchingObjective) and objective.prediction_type == "flow"
    latents = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4) / 100
    batch = objective.draw(latents, torch.Generator().manual_seed(3), "cpu")
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(latents.shape, generator=generator)
    u = torch.rand((2,), generator=generator)
    timesteps = 1000.0 - (u * 1000).long().float()
    sigma = (timesteps / 1000).reshape(2, 1, 1, 1)
    assert torch.equal(batch.timesteps, timesteps)
    torch.testing.assert_close(batch.noisy, (1 - sigma) * latents + sigma * noise)
    assert torch.equal(batch.target, noise - latents) and batch.weights is None
    torch.testing.assert_close(objective.per_sample_loss(torch.zeros_like(latents), batch),
                               ((noise - latents) ** 2).mean(dim=(1, 2, 3)))


def test_the_single_file_is_bfls_layout_which_from_single_file_reads_back_exactly(tmp_path):
    """The transformer in BFL's layout (flux1_layout.py) read back by diffusers' own converter
    (`FluxTransformer2DModel.from_single_file`), every weight equal. At FLUX.1's width (3072:
    diffusers' converter splits `linear1` at FLUX.1's own sizes) with one block of each kind,
    random bf16 weights standing in for trained ones (the job test exports a trained one)."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=8, pooled_projection_dim=8,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    transformer = transformer.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    transformer.save_config(tmp_path / "transformer")

    class Pipeline:  # the one attribute single_file_state reads
        pass

    pipe = Pipeline()
    pipe.transformer = transformer
    FAMILY.check_single_file(pipe)
    save_file(FAMILY.single_file_state(pipe)[""], tmp_path / "flux1.safetensors")
    loaded = FluxTransformer2DModel.from_single_file(
        str(tmp_path / "flux1.safetensors"), config=str(tmp_path), subfolder="transformer",
        torch_dtype=torch.bfloat16)
    expected, back = transformer.state_dict(), loaded.state_dict()
    assert set(back) == set(expected)
    assert all(torch.equal(back[key], expected[key]) for key in expected)


def test_clip_trains_with_the_text_encoder_and_t5_stays_frozen(pipeline):
    from dreambooth_job.outputs import weight_files

    modules = FAMILY.trainable_modules(pipeline, train_text_encoder=True)
    assert list(modules) == ["denoiser", "text_encoder"]
    weight_files.check_exportable(pipeline, single_file=False, lora_text_encoders=True)


def random_adapters(module, targets, seed):
    """Rank-2 adapters (alpha 3) on `targets` with random B matrices: a visible, known update."""
    from dreambooth_job.training import lora_adapters

    if module.__class__.__name__ == "CLIPTextModel":
        lora_adapters.add_lora(None, module, rank=2, alpha=3, text_encoder_targets=targets)
    else:
        lora_adapters.add_lora(module, target_modules=targets, rank=2, alpha=3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def sample(pipe) -> torch.Tensor:
    latents = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0))
    return pipe(prompt="a sks dog", height=32, width=32, num_inference_steps=2, latents=latents,
                output_type="pt").images


def test_both_lora_files_have_the_same_effect(tiny_flux1_model, tmp_path):
    """The kohya file (original FLUX.1 names, q/k/v fused; CLIP-L as lora_te1_) read through
    diffusers' converter gives the pipeline the same output as the diffusers file. Double-stream
    modules only: diffusers' reader splits single-stream `linear1` at FLUX.1's own widths."""
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from dreambooth_job.outputs import lora_writers

    trained = FluxPipeline.from_pretrained(tiny_flux1_model)
    random_adapters(trained.transformer, [f"transformer_blocks.0.{m}" for m in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.to_add_out",
        "ff.net.0.proj", "ff_context.net.2", "norm1_context.linear")], seed=5)
    random_adapters(trained.text_encoder, ["q_proj", "v_proj", "out_proj"], seed=6)
    modules = FAMILY.lora_format.modules(trained)
    lora_writers.save_lora_diffusers(tmp_path / "diffusers", FAMILY, modules, metadata={})
    kohya = lora_writers.save_lora_kohya(tmp_path / "kohya.safetensors", FAMILY, modules, metadata={})
    keys = load_file(kohya).keys()
    assert {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
            "lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight",
            "lora_unet_double_blocks_0_txt_attn_proj.alpha", "lora_unet_double_blocks_0_img_mlp_0.alpha",
            "lora_unet_double_blocks_0_txt_mlp_2.alpha",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"} <= set(keys)
    assert "lora_unet_double_blocks_0_txt_mod_lin.alpha" in keys
    assert all(key.startswith(("lora_unet_double_blocks_0_", "lora_te1_text_model_")) for key in keys)

    outputs = []
    for path in (tmp_path / "diffusers", kohya):
        pipe = FluxPipeline.from_pretrained(tiny_flux1_model)
        pipe.load_lora_weights(str(path))
        assert pipe.text_encoder.peft_config and pipe.transformer.peft_config  # both were loaded
        outputs.append(sample(pipe))
    plain = sample(FluxPipeline.from_pretrained(tiny_flux1_model))
    assert not torch.allclose(outputs[0], plain)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_single_stream_adapters_fuse_into_linear1_rows_q_k_v_mlp(tiny_flux1_model):
    """The single-stream block's q, k, v adapters (the default targets reach them) as one update
    of the original `linear1`, whose rows are q, k, v, then the MLP's input: each part's update in
    its rows, zeros in the MLP's; `proj_out` is `linear2`; `x_embedder` is `img_in` (diffusers'
    reader drops the outer modules' keys, ComfyUI's maps every original module name)."""
    from diffusers import FluxPipeline

    from dreambooth_job.outputs import lora_writers
    from dreambooth_job.training import lora_adapters

    trained = FluxPipeline.from_pretrained(tiny_flux1_model)
    random_adapters(trained.transformer, ["to_q", "to_k", "to_v", "to_out.0",
                                          "single_transformer_blocks.0.proj_out", "x_embedder"], seed=7)
    kohya = lora_writers.kohya_state_dict(FAMILY, FAMILY.lora_format.modules(trained))
    block = trained.transformer.single_transformer_blocks[0]

    def update(layer):  # alpha / rank x B @ A, as peft applies it
        name = lora_adapters.ADAPTER_NAME
        return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight

    def kohya_update(name):
        down, up = kohya[f"lora_unet_{name}.lora_down.weight"], kohya[f"lora_unet_{name}.lora_up.weight"]
        return kohya[f"lora_unet_{name}.alpha"] / down.shape[0] * up @ down

    mlp_rows = block.proj_mlp.out_features
    expected = torch.cat([update(block.attn.to_q), update(block.attn.to_k), update(block.attn.to_v),
                          torch.zeros(mlp_rows, block.attn.to_q.in_features)])
    with torch.no_grad():
        torch.testing.assert_close(kohya_update("single_blocks_0_linear1"), expected)
        torch.testing.assert_close(kohya_update("single_blocks_0_linear2"), update(block.proj_out))
        torch.testing.assert_close(kohya_update("img_in"), update(trained.transformer.x_embedder))
        double = trained.transformer.transformer_blocks[0].attn
        torch.testing.assert_close(kohya_update("double_blocks_0_img_attn_qkv"), torch.cat(
            [update(double.to_q), update(double.to_k), update(double.to_v)]))


@pytest.mark.parametrize("preset", ["attention", "attention-mlp", "all"])
def test_each_presets_two_lora_files_have_one_effect_on_the_original_weights(tiny_flux1_model, preset):
    """Every --lora-targets preset: the diffusers file's adapters merged into the transformer, in
    BFL's layout, equal the base's BFL weights plus each kohya module's alpha / rank x up @ down,
    the module found as ComfyUI finds it (`lora_unet_<original key, '.' as '_'>`). Every adapted
    module is in the kohya file; `linear1` holds q, k, v and, with `all`, the MLP input."""
    from diffusers import FluxPipeline

    from dreambooth_job.families.bfl_layout import original_state
    from dreambooth_job.families.flux1_layout import FLUX1_LAYOUT
    from dreambooth_job.outputs import lora_writers

    trained = FluxPipeline.from_pretrained(tiny_flux1_model)
    base = {key: tensor.clone()  # fusing below changes the weights in place
            for key, tensor in original_state(FLUX1_LAYOUT, trained.transformer.state_dict(), "test").items()}
    random_adapters(trained.transformer, FAMILY.lora_format.targets(preset, trained.transformer), seed=9)
    kohya = lora_writers.kohya_state_dict(FAMILY, FAMILY.lora_format.modules(trained))
    trained.transformer.fuse_lora()
    trained.transformer.unload_lora()
    merged = original_state(FLUX1_LAYOUT, trained.transformer.state_dict(), "test")

    by_comfy_name = {"lora_unet_" + key.removesuffix(".weight").replace(".", "_"): key
                     for key in base if key.endswith(".weight")}
    expected = dict(base)
    for name in {key.rsplit(".", 2)[0] for key in kohya if key.endswith(".lora_down.weight")}:
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        key = by_comfy_name[name]
        expected[key] = base[key] + kohya[f"{name}.alpha"] / down.shape[0] * up @ down
    changed = {key for key in base if not torch.equal(merged[key], base[key])}
    assert changed == {by_comfy_name[name] for name in {k.rsplit(".", 2)[0] for k in kohya}}
    for key in base:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-5, atol=1e-6)
    assert ("single_blocks.0.linear2.weight" in changed) == (preset == "all")
    assert "single_blocks.0.linear1.weight" in changed and "double_blocks.0.txt_attn.qkv.weight" in changed


def test_the_final_modulations_halves_are_swapped_in_the_kohya_file(tiny_flux1_model):
    """`norm_out.linear` is (scale, shift) in diffusers and `final_layer.adaLN_modulation.1` is
    (shift, scale) in BFL's layout: the up matrix's halves change places, as the weights' do."""
    from diffusers import FluxPipeline

    from dreambooth_job.outputs import lora_writers

    trained = FluxPipeline.from_pretrained(tiny_flux1_model)
    random_adapters(trained.transformer, ["norm_out.linear"], seed=8)
    kohya = lora_writers.kohya_state_dict(FAMILY, FAMILY.lora_format.modules(trained))
    layer = trained.transformer.norm_out.linear
    name = "lora_unet_final_layer_adaLN_modulation_1"
    scale, shift = layer.lora_B["default"].weight.chunk(2)
    assert torch.equal(kohya[f"{name}.lora_up.weight"], torch.cat([shift, scale]))
    assert torch.equal(kohya[f"{name}.lora_down.weight"], layer.lora_A["default"].weight)


def test_bench_flux1_dev_is_refused_in_one_line_where_memory_is_short(monkeypatch):
    """Built on the meta device from the published config and estimated before anything real is
    allocated: a 128 GiB CPU host cannot train 12B parameters in fp32 (the available memory is set,
    as the SDXL bench test does: the decision's input)."""
    from click.testing import CliRunner

    from dreambooth_job.bench import device as bench_device
    from dreambooth_job.cli import main
    from dreambooth_job.exit_codes import ExitCode

    monkeypatch.setattr(bench_device, "available_memory_bytes", lambda device_type: 128 * 2**30)
    outcome = CliRunner().invoke(main, ["bench", "--model", "flux1-dev"])
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    message = outcome.output.strip().splitlines()[-1]
    assert "--model flux1-dev needs about" in message and "128 GiB is available" in message
