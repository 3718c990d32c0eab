"""The Trainer on an SDXL base: the UNet's time ids are each trained image's own geometry (the
photo's size as uploaded, the crop the job took, the resolution), for instance and class images,
centre-cropped, randomly cropped and flipped alike."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDPMScheduler
from helpers import make_photo
from PIL import Image

from dreambooth_job import families
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families.objective import DdpmObjective
from dreambooth_job.training import subject_photos
from dreambooth_job.training.subject_photos import cover_size, to_tensor
from dreambooth_job.training.trainer import Trainer

RES = 64


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_sdxl_model):
    return families.detect(str(tiny_sdxl_model)).load_pipeline(str(tiny_sdxl_model), "/nonexistent")


@pytest.fixture
def wide_photo(tmp_path) -> subject_photos.Photo:
    """A non-square upload, 200x120: downscaled to 107x64, so a square crop moves sideways only."""
    path = make_photo(tmp_path / "wide.png", seed=3, size=(200, 120))
    return subject_photos.load_photo(path, min_side=64, max_pixels=10**7, resolution=RES)


def run(pipeline, photo, steps: int, **overrides):
    """Train `steps` steps; the time ids the UNet received, and the pixels each step encoded."""
    config = TrainConfig(instance_data="s3://b/p/", class_noun="dog", output="s3://b/o/",
                         resolution=RES, max_train_steps=steps, num_class_images=1, seed=0,
                         metrics_port=0, log_every=steps, **overrides)
    pipe = copy.deepcopy(pipeline)
    trainer = Trainer(config, pipe, DdpmObjective(DDPMScheduler.from_config(pipe.scheduler.config)),
                      instance_images=[photo.image], instance_sizes=[photo.original_size],
                      instance_prompt="a sks dog", class_images=[Image.new("RGB", (RES, RES))],
                      class_prompt="a dog")
    time_ids, pixels = [], []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: time_ids.append(kwargs["added_cond_kwargs"]["time_ids"].clone()),
        with_kwargs=True)
    trainer.setup()
    encoder = trainer.inputs.encoder
    encode = encoder.latent_params
    encoder.latent_params = lambda batch: (pixels.append(batch.clone()), encode(batch))[1]
    trainer.train()
    return time_ids, pixels


@pytest.mark.parametrize("cache_latents", [True, False])
def test_time_ids_are_the_photos_original_size_and_centre_crop_and_the_class_images(
        sdxl_pipeline, wide_photo, cache_latents):
    assert wide_photo.original_size == (200, 120) and wide_photo.image.size == (107, 64)
    # --cache-latents (the default) caches the latents and the prompt embeddings, pooled included.
    time_ids, _ = run(sdxl_pipeline, wide_photo, 2, cache_latents=cache_latents)
    assert len(time_ids) == 2
    for ids in time_ids:
        # (height, width) as uploaded, (top, left) of the centred crop of the 107x64 image, target.
        assert ids[0].tolist() == [120, 200, 0, (107 - RES) // 2, RES, RES]
        # Class images are sampled at the resolution: whole, uncropped.
        assert ids[1].tolist() == [RES, RES, 0, 0, RES, RES]


def test_time_ids_follow_each_random_crop_and_flip(sdxl_pipeline, wide_photo):
    steps = 4
    time_ids, pixels = run(sdxl_pipeline, wide_photo, steps, center_crop=False, random_flip=True)
    resized = wide_photo.image.resize(cover_size(wide_photo.image.size, RES), Image.BICUBIC)
    instance_pixels = [batch for batch in pixels if batch.shape[0] == 1][::2]  # instance, class, ...
    assert len(time_ids) == len(instance_pixels) == steps
    for ids, encoded in zip(time_ids, instance_pixels):
        height, width, top, left, *target = ids[0].tolist()
        assert (height, width, top, target) == (120, 200, 0, [RES, RES])
        # The crop the time ids name is the one trained on (mirrored when the image was flipped:
        # then the offset is measured from the mirrored image's left edge).
        crop = to_tensor(resized.crop((left, 0, left + RES, RES)))
        flipped = to_tensor(resized.transpose(Image.FLIP_LEFT_RIGHT).crop((left, 0, left + RES, RES)))
        assert torch.equal(encoded[0], crop) or torch.equal(encoded[0], flipped)


def test_a_v_prediction_sdxl_base_trains_on_the_velocity(tmp_path, wide_photo):
    """The prediction type is the base model's scheduler's, as for SD: v-prediction's target is
    the velocity, and the loss is the UNet's error against it."""
    from dreambooth_job.devtools import tiny_models

    tiny_models.build_tiny_sdxl_pipeline(tmp_path / "v", prediction_type="v_prediction")
    pipe = families.detect(str(tmp_path / "v")).load_pipeline(str(tmp_path / "v"), str(tmp_path))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    assert scheduler.config.prediction_type == "v_prediction"
    config = TrainConfig(instance_data="s3://b/p/", class_noun="dog", output="s3://b/o/",
                         resolution=RES, max_train_steps=1, prior_preservation=False, seed=0,
                         metrics_port=0)
    trainer = Trainer(config, pipe, DdpmObjective(scheduler), instance_images=[wide_photo.image],
                      instance_sizes=[wide_photo.original_size], instance_prompt="a sks dog",
                      class_images=None, class_prompt="a dog")
    trainer.setup()
    targets, predictions = [], []
    velocity = scheduler.get_velocity
    scheduler.get_velocity = lambda *args: targets.append(velocity(*args)) or targets[-1]
    pipe.unet.register_forward_hook(lambda module, args, output: predictions.append(output.sample))
    with torch.no_grad():
        loss, instance_loss, _ = trainer.loss(0)
    assert len(targets) == len(predictions) == 1
    torch.testing.assert_close(instance_loss, ((predictions[0] - targets[0]) ** 2).mean())
