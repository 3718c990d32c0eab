"""The RunContext's parts: phase load_model adds its `LoadedModel` (and the photos at its
resolution) and replaces neither the job's config nor phase validate's photos; --resolution auto
is resolved once, by base_models.training_resolution, and the Trainer only reads the result."""

import dataclasses
import shutil

import pytest

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.events import JobObserver
from dreambooth_job.phases import load_model
from dreambooth_job.phases import photos as photo_phases
from dreambooth_job.phases.context import RunContext
from dreambooth_job.training import base_models

NATIVE = 64  # the tiny model's: 32 latent pixels, a 2x VAE


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model)


def validated_context(tmp_path, photo_dir, tiny_model, **overrides) -> RunContext:
    config = TrainConfig(instance_data=str(photo_dir), class_noun="dog", output=str(tmp_path / "out"),
                         base_model=str(tiny_model), cache_dir=str(tmp_path / "cache"),
                         subject_id="rex", job_id="rex-1", identifier="sks", **overrides)
    ctx = RunContext.create(config, "f" * 64, JobObserver())
    ctx.work = tmp_path / "work"
    shutil.copytree(photo_dir, ctx.work / "photos")
    photo_phases.validate(ctx)
    return ctx


def test_load_model_adds_its_part_and_replaces_neither_config_nor_photos(tmp_path, photo_dir,
                                                                          tiny_model):
    ctx = validated_context(tmp_path, photo_dir, tiny_model)
    config, validated = ctx.config, ctx.photos
    load_model.load(ctx)
    assert ctx.config is config and ctx.config.resolution is None  # auto stays the job's choice
    assert ctx.photos is validated
    assert min(validated.photos[0].image.size) == 288  # decoded for validation, never upscaled
    assert ctx.loaded.resolution == NATIVE == ctx.run_config.resolution
    assert [min(p.image.size) for p in ctx.subject_photos.photos] == [NATIVE] * 4
    assert ctx.subject_photos.used == validated.used
    assert ctx.loaded.identifier.token == "sks" and "sks" in ctx.loaded.prompts.instance
    assert ctx.result.training.resolution == NATIVE and ctx.result.config["resolution"] == NATIVE
    assert ctx.result.prompts == ctx.loaded.prompts


def test_an_explicit_resolution_keeps_the_validated_photos(tmp_path, photo_dir, tiny_model):
    ctx = validated_context(tmp_path, photo_dir, tiny_model, resolution=48)
    load_model.load(ctx)
    assert ctx.loaded.resolution == 48 and ctx.subject_photos is ctx.photos
    assert ctx.result.config["resolution"] == 48


def test_what_load_model_adds_cannot_be_read_before_it_ran(tmp_path, photo_dir, tiny_model):
    ctx = validated_context(tmp_path, photo_dir, tiny_model)
    for read in (lambda: ctx.loaded, lambda: ctx.run_config, lambda: ctx.subject_photos):
        with pytest.raises(RuntimeError, match="before phase load_model"):
            read()


def test_auto_resolution_is_resolved_by_one_function(tiny_pipeline):
    assert base_models.training_resolution(None, tiny_pipeline) == NATIVE
    assert base_models.training_resolution(48, tiny_pipeline) == 48


def test_the_trainer_reads_a_resolved_resolution_and_never_resolves_it(tiny_pipeline):
    from dreambooth_job.training.trainer import Trainer

    config = TrainConfig(instance_data="x", class_noun="dog", output="out")
    with pytest.raises(ValueError, match="training_resolution"):
        Trainer(config, tiny_pipeline, tiny_pipeline.scheduler, instance_images=[],
                instance_prompt="a sks dog", class_images=None, class_prompt="a dog")


def test_every_part_of_the_context_has_its_real_type():
    from dreambooth_job.phases.context import LoadedModel

    untyped = [f"{cls.__name__}.{f.name}" for cls in (RunContext, LoadedModel)
               for f in dataclasses.fields(cls) if "Any" in str(f.type) or f.type in ("list", "dict")]
    assert untyped == []
