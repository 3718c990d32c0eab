"""The model-family seam: detection from model_index.json, and the SD family encoding prompts and
conditioning the UNet exactly as the trainer did before the seam existed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dreambooth_job import families
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.families import PromptEmbeddings
from dreambooth_job.families.sd import StableDiffusion
from dreambooth_job.families.sdxl import StableDiffusionXL
from dreambooth_job.training import base_models


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model):
    base = base_models.resolve_base_model(str(tiny_model), "/nonexistent")
    return base_models.load_pipeline(base, "/nonexistent")


def model_with_index(tiny_model, tmp_path, text: str):
    """A copy of the tiny model whose model_index.json says `text`."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    (path / "model_index.json").write_text(text)
    return path


def test_a_stable_diffusion_pipeline_is_detected_as_sd(tiny_model, tiny_pipeline):
    assert isinstance(families.detect(str(tiny_model)), StableDiffusion)
    assert isinstance(families.for_pipeline(tiny_pipeline), StableDiffusion)


def test_an_sdxl_pipeline_is_detected_as_sdxl(tiny_sdxl_model, tmp_path):
    assert isinstance(families.detect(str(tiny_sdxl_model)), StableDiffusionXL)
    pipeline = base_models.load_pipeline(base_models.resolve_base_model(str(tiny_sdxl_model), str(tmp_path)),
                                         str(tmp_path))
    assert type(pipeline).__name__ == "StableDiffusionXLPipeline"
    assert isinstance(families.for_pipeline(pipeline), StableDiffusionXL)


@pytest.mark.parametrize("class_name", ["StableDiffusion3Pipeline", "QwenImagePipeline"])
def test_an_unknown_pipeline_class_is_invalid_input_naming_it(tiny_model, tmp_path, class_name):
    index = json.loads((tiny_model / "model_index.json").read_text())
    path = model_with_index(tiny_model, tmp_path, json.dumps({**index, "_class_name": class_name}))
    model = base_models.resolve_base_model(str(path), str(tmp_path / "cache"))
    with pytest.raises(InvalidInputError) as error:
        base_models.load_pipeline(model, str(tmp_path / "cache"))
    assert error.value.exit_code == ExitCode.INVALID_INPUT
    message = error.value.message
    assert class_name in message and str(path) in message and "StableDiffusionPipeline" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"_class_name": {"x": 1}}', "{}"])
def test_an_unreadable_index_is_invalid_input(tiny_model, tmp_path, text):
    path = model_with_index(tiny_model, tmp_path, text)
    with pytest.raises(InvalidInputError) as error:
        families.detect(str(path))
    assert str(path) in error.value.message and "\n" not in error.value.message


def test_a_pipeline_of_no_family_is_refused():
    with pytest.raises(InvalidInputError, match="'object' pipeline"):
        families.for_pipeline(object())


def test_sd_prompt_encoding_is_the_trainers_former_one(tiny_pipeline):
    """The trainer used to tokenize to max_length and take the text encoder's last hidden states."""
    family = families.for_pipeline(tiny_pipeline)
    tokenizer, encoder = tiny_pipeline.tokenizer, tiny_pipeline.text_encoder
    for prompt in ("a photo of sks dog", "a dog " * 100):
        former_ids = tokenizer(prompt, padding="max_length", truncation=True,
                               max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        ids = family.tokenize(tiny_pipeline, prompt)
        assert len(ids) == 1 and torch.equal(ids[0], former_ids)
        with torch.no_grad():
            former = encoder(former_ids)[0]
            embeddings = family.encode_prompt(family.text_encoders(tiny_pipeline), ids, "cpu")
        assert embeddings.pooled is None
        assert torch.equal(embeddings.hidden_states, former)


def test_sd_conditions_the_unet_on_hidden_states_only(tiny_pipeline):
    family = families.for_pipeline(tiny_pipeline)
    with torch.no_grad():
        ids = family.tokenize(tiny_pipeline, "a sks dog")
        embeddings = family.encode_prompt(family.text_encoders(tiny_pipeline), ids, "cpu").expand(2)
        kwargs = family.denoiser_conditioning(embeddings, torch.float32)
        assert list(kwargs) == ["encoder_hidden_states"]
        noisy = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        timesteps = torch.tensor([10, 500])
        former = tiny_pipeline.unet(noisy, timesteps, embeddings.hidden_states).sample
        assert torch.equal(tiny_pipeline.unet(noisy, timesteps, **kwargs).sample, former)


def test_trainable_modules_and_native_resolution(tiny_pipeline):
    family = families.for_pipeline(tiny_pipeline)
    assert list(family.trainable_modules(tiny_pipeline, False)) == ["denoiser"]
    assert list(family.trainable_modules(tiny_pipeline, True)) == ["denoiser", "text_encoder"]
    assert family.native_resolution(tiny_pipeline) == 64  # 32 latent pixels, a 2x VAE


def test_embeddings_batch_with_and_without_pooled_parts():
    plain = PromptEmbeddings(torch.ones(1, 3, 4))
    pooled = PromptEmbeddings(torch.ones(1, 3, 4), pooled=torch.ones(1, 4))
    assert PromptEmbeddings.cat([plain.expand(2), plain]).hidden_states.shape == (3, 3, 4)
    both = PromptEmbeddings.cat([pooled.expand(2), pooled])
    assert both.hidden_states.shape == (3, 3, 4) and both.pooled.shape == (3, 4)


@pytest.fixture(scope="module")
def tiny_sdxl_pipeline(tiny_sdxl_model):
    return families.detect(str(tiny_sdxl_model)).load_pipeline(str(tiny_sdxl_model), "/nonexistent")


def test_sdxl_prompt_encoding_is_the_pipelines_own(tiny_sdxl_pipeline):
    """Both encoders' penultimate hidden states concatenated, the second's pooled projection: what
    StableDiffusionXLPipeline.encode_prompt conditions its UNet on when sampling."""
    pipe = tiny_sdxl_pipeline
    family = families.for_pipeline(pipe)
    assert list(family.trainable_modules(pipe, True)) == ["denoiser", "text_encoder", "text_encoder_2"]
    for prompt in ("a photo of sks dog", "a dog " * 100):
        with torch.no_grad():
            ids = family.tokenize(pipe, prompt)
            embeddings = family.encode_prompt(family.text_encoders(pipe), ids, "cpu")
            hidden, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu",
                                                      do_classifier_free_guidance=False)
        assert len(ids) == 2 and embeddings.hidden_states.shape[-1] == pipe.unet.config.cross_attention_dim
        assert torch.equal(embeddings.hidden_states, hidden) and torch.equal(embeddings.pooled, pooled)


def test_sdxl_time_ids_are_original_size_crop_and_target_as_the_pipelines(tiny_sdxl_pipeline):
    from dreambooth_job.families.base import ImageGeometry

    pipe = tiny_sdxl_pipeline
    family = families.for_pipeline(pipe)
    embeddings = PromptEmbeddings(torch.zeros(1, 77, 64), torch.zeros(1, 32)).expand(2)
    geometry = [ImageGeometry((1200, 800), (0, 48), (64, 64)),
                ImageGeometry((64, 64), (0, 0), (64, 64))]
    kwargs = family.denoiser_conditioning(embeddings, torch.float32, geometry=geometry)
    expected = [pipe._get_add_time_ids((800, 1200), (0, 48), (64, 64), torch.float32, 32),
                pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, 32)]
    assert torch.equal(kwargs["added_cond_kwargs"]["time_ids"], torch.cat(expected))
    assert kwargs["added_cond_kwargs"]["text_embeds"].shape == (2, 32)
