"""The FLUX.2 [klein] family against Flux2KleinPipeline's own computations: detection, prompt
embeddings, latents, the transformer call, the initial noise, and the rectified-flow objective
against a hand computation."""

from __future__ import annotations

import pytest
import torch

from dreambooth_job import families
from dreambooth_job.families.flux2 import Flux2Klein
from dreambooth_job.families.objective import FlowMatchingObjective

FAMILY = Flux2Klein()


@pytest.fixture(scope="module")
def pipeline(tiny_flux2_klein_model):
    path = str(tiny_flux2_klein_model)
    return families.detect(path).load_pipeline(path, "/nonexistent")


def test_a_klein_pipeline_is_detected_from_model_index(tiny_flux2_klein_model, pipeline):
    assert isinstance(families.detect(str(tiny_flux2_klein_model)), Flux2Klein)
    assert isinstance(families.detect_local(str(tiny_flux2_klein_model)), Flux2Klein)
    assert isinstance(families.for_pipeline(pipeline), Flux2Klein)


def test_prompt_embeddings_are_the_pipelines(pipeline):
    prompt = "a photo of sks dog"
    ids = FAMILY.tokenize(pipeline, prompt)
    with torch.no_grad():
        ours = FAMILY.encode_prompt(FAMILY.text_encoders(pipeline), ids, "cpu")
        theirs, text_ids = pipeline.encode_prompt(prompt, device="cpu")
    assert ours.hidden_states.shape == theirs.shape == (1, 512, 48)
    assert torch.equal(ours.hidden_states, theirs)
    conditioning = FAMILY.denoiser_conditioning(ours, torch.float32)
    assert torch.equal(conditioning["txt_ids"], text_ids)


def test_the_saved_tokenizer_tells_prompts_apart(pipeline):
    """The tiny Qwen BPE survives save_pretrained: a prompt is real tokens, not just the template."""
    ids, mask = FAMILY.tokenize(pipeline, "a photo of sks dog")
    other, other_mask = FAMILY.tokenize(pipeline, "a red cube")
    assert ids.shape == (1, 512) and int(mask.sum()) > int(other_mask.sum()) > 15
    assert not torch.equal(ids, other)
    text = pipeline.tokenizer.decode(ids[0][mask[0].bool()])
    assert text.startswith("<|im_start|>user\na photo of sks dog<|im_end|>")


def test_latents_are_the_pipelines_normalised_patches(pipeline):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mode = torch.cat([pipeline.vae.encode(p[None]).latent_dist.mode() for p in pixels])
        expected = torch.cat([pipeline._encode_vae_image(p[None], None) for p in pixels])
    latents = FAMILY.encode_latents(pipeline.vae, mode)
    assert latents.shape == (2, 16, 8, 8)
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)


def test_predict_is_the_pipelines_transformer_call(pipeline):
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 16, 4, 4, generator=generator)
    timesteps = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        embeddings = FAMILY.encode_prompt(FAMILY.text_encoders(pipeline),
                                          FAMILY.tokenize(pipeline, "a dog"), "cpu").expand(2)
        ours = FAMILY.predict(pipeline.transformer, noisy, timesteps,
                              FAMILY.denoiser_conditioning(embeddings, torch.float32))
        latent_ids = pipeline._prepare_latent_ids(noisy)
        tokens = pipeline.transformer(
            hidden_states=pipeline._pack_latents(noisy), timestep=timesteps / 1000, guidance=None,
            encoder_hidden_states=embeddings.hidden_states,
            txt_ids=pipeline._prepare_text_ids(embeddings.hidden_states), img_ids=latent_ids,
            return_dict=False)[0]
    # Row-major tokens: unpacking by position ids is a reshape.
    expected = tokens.permute(0, 2, 1).reshape(2, 16, 4, 4)
    assert torch.equal(ours, expected)


def test_initial_noise_is_what_the_pipeline_takes_as_latents(pipeline):
    noise = FAMILY.initial_noise(pipeline, 32, torch.Generator().manual_seed(0))
    assert noise.shape == (16, 8, 8)  # 32 px: 16 latent pixels, 8 patches a side
    images = FAMILY.generate(pipeline, ["a dog"], latents=noise[None], resolution=32,
                             num_inference_steps=2, guidance_scale=1.0)
    again = FAMILY.generate(pipeline, ["a dog"], latents=noise[None], resolution=32,
                            num_inference_steps=2, guidance_scale=1.0)
    assert images[0].size == (32, 32) and images[0].tobytes() == again[0].tobytes()


def test_the_objective_is_rectified_flow_by_hand(pipeline):
    objective = FAMILY.training_objective(pipeline)
    assert isinstance(objective, FlowMatchingObjective) and objective.prediction_type == "flow"
    latents = torch.arange(2 * 16 * 2 * 2, dtype=torch.float32).reshape(2, 16, 2, 2) / 100
    batch = objective.draw(latents, torch.Generator().manual_seed(3), "cpu")
    # The same draws by hand: noise first, then u uniform, timestep 1000 - int(1000 u), s = t / 1000.
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(latents.shape, generator=generator)
    u = torch.rand((2,), generator=generator)
    timesteps = 1000.0 - (u * 1000).long().float()
    sigma = (timesteps / 1000).reshape(2, 1, 1, 1)
    assert torch.equal(batch.timesteps, timesteps)
    torch.testing.assert_close(batch.noisy, (1 - sigma) * latents + sigma * noise)
    assert torch.equal(batch.target, noise - latents)
    assert batch.weights is None
    prediction = torch.zeros_like(latents)
    torch.testing.assert_close(objective.per_sample_loss(prediction, batch),
                               ((noise - latents) ** 2).mean(dim=(1, 2, 3)))
