"""The toy world's pieces: pictures, the lossless latent space, the features the metrics read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreambooth_job.toyworld import bases, features, world
from dreambooth_job.toyworld.latent import build_vae


def test_features_read_back_what_was_drawn():
    rng = np.random.default_rng(7)
    for _ in range(100):
        scene = world.random_scene(rng)
        found = features.features(world.draw(scene, rng))
        assert (found.background, found.colour, found.shape) == (scene.background, scene.colour, scene.shape)
        assert found.subject_match < 0.2


def test_subject_photos_match_the_subject_and_vary():
    photos = world.subject_photos(5)
    found = [features.features(p) for p in photos]
    assert all(f.subject_match > 0.85 and f.shape == "ball" for f in found)
    assert {f.background for f in found} == set(world.BACKGROUNDS)
    assert len({p.tobytes() for p in photos}) == 5


def test_captions_use_the_world_words_with_dropout():
    rng = np.random.default_rng(0)
    captions = [world.sample(rng)[1] for _ in range(400)]
    assert "" in captions and "a ball" in captions
    assert "a red ball on a green background" in captions


def test_latent_space_is_lossless_on_the_world():
    images, _ = world.dataset(16, seed=3)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae = build_vae()
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        decoded = vae.decode(posterior.mean).sample
    assert posterior.mean.shape == (16, 4, 16, 16)
    assert float(posterior.std.max()) < 1e-5
    assert float((decoded - pixels).abs().max()) < 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_diversity_is_high_for_the_world_and_zero_for_copies(seed):
    rng = np.random.default_rng(seed)
    varied = [features.features(world.draw(world.random_scene(rng, shape="ball"), rng)) for _ in range(24)]
    assert features.pairwise_diversity(varied) > 0.5
    assert features.background_diversity(varied) > 0.5
    same = features.features(world.subject_photos(1)[0])
    assert features.pairwise_diversity([same] * 5) == 0.0


def test_shipped_base_model_is_complete():
    base = bases.ASSET_BASE_MODEL
    assert (base / "model_index.json").is_file()
    assert (base / "loss.csv").is_file()
    recipe = json.loads((base / "train.json").read_text())
    assert recipe["recipe"]["seed"] == 0 and recipe["steps_done"] > 0
    # A fixture of a few MB: fp16 weights and CLIP's vocab.json + merges.txt (save_compact).
    assert sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) < 8 * 2**20
    assert not (base / "tokenizer" / "tokenizer.json").exists()


def test_compact_fixture_loads_in_fp32_with_the_real_clip_tokenizer():
    from dreambooth_job.devtools.tiny_models import clip_tokenizer
    from dreambooth_job.training.base_models import load_pipeline, resolve_base_model

    pipeline = load_pipeline(resolve_base_model(str(bases.ASSET_BASE_MODEL), "/nonexistent"),
                             "/nonexistent")
    assert {pipeline.unet.dtype, pipeline.text_encoder.dtype, pipeline.vae.dtype} == {torch.float32}
    captions = [world.caption("ball", "red", "green"), "a olis ball", "a box on a black background"]
    assert pipeline.tokenizer(captions).input_ids == clip_tokenizer()(captions).input_ids
