import pytest

from dreambooth_job import families
from dreambooth_job.training import prior_images

BASE = dict(model_fingerprint="m1", class_prompt="a dog", resolution=512,
            sampler="DPMSolverMultistepScheduler", steps=25, guidance_scale=7.5, seed=0)


def test_equal_inputs_give_equal_keys():
    assert prior_images.cache_key(**BASE) == prior_images.cache_key(**dict(BASE))


@pytest.mark.parametrize("field, other", [
    ("model_fingerprint", "m2"), ("class_prompt", "a cat"), ("resolution", 768),
    ("sampler", "DDIMScheduler"), ("steps", 50), ("guidance_scale", 5.0), ("seed", 1)])
def test_every_input_that_changes_the_images_changes_the_key(field, other):
    assert prior_images.cache_key(**{**BASE, field: other}) != prior_images.cache_key(**BASE)


def test_the_family_is_part_of_the_key_and_sd_keys_stay_what_they_were():
    """SDXL's class images never serve an SD run (and back); SD's keys are those of caches written
    before families existed (test_storage_integrity.py pins one)."""
    tags = {f.name: f.class_cache_tag() for f in families.FAMILIES}
    assert prior_images.cache_key(**BASE, family=tags["sd"]) == prior_images.cache_key(**BASE)
    assert prior_images.cache_key(**BASE, family=tags["sdxl"]) != prior_images.cache_key(**BASE)
    assert len({prior_images.cache_key(**BASE, family=tag) for tag in tags.values()}) == len(tags)


def test_image_names_sort_by_index():
    names = [prior_images.image_name(i) for i in (0, 9, 10, 199)]
    assert names == sorted(names) == ["00000.png", "00009.png", "00010.png", "00199.png"]
