"""--guidance-scale auto and --save-precision auto: the model family's defaults
(ModelFamily.default_guidance_scale, default_save_precision), resolved once for the loaded model
(training/base_models.py); SD and SDXL keep the values they had before auto existed."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("torch")

from diffusers import Flux2KleinPipeline  # noqa: E402

from dreambooth_job.config.run_identity import differing_model_fields  # noqa: E402
from dreambooth_job.config.train_config import TrainConfig  # noqa: E402
from dreambooth_job.families import FAMILIES  # noqa: E402
from dreambooth_job.families.flux2 import Flux2Klein  # noqa: E402
from dreambooth_job.training import base_models  # noqa: E402

REQUIRED = {"instance_data": "d", "class_noun": "dog", "output": "o"}


def test_sd_and_sdxl_sample_and_save_as_before_auto():
    for family in FAMILIES:
        if family.name in ("sd", "sdxl"):
            assert (family.default_guidance_scale, family.default_save_precision) == (7.5, "fp16")


def test_klein_samples_with_its_pipelines_default_and_saves_bf16():
    pipeline_default = inspect.signature(Flux2KleinPipeline.__call__).parameters["guidance_scale"].default
    assert Flux2Klein.default_guidance_scale == pipeline_default
    assert Flux2Klein.default_save_precision == "bf16"


@pytest.mark.parametrize("fixture, guidance, precision", [
    ("tiny_model", 7.5, "fp16"), ("tiny_flux2_klein_model", 4.0, "bf16")])
def test_auto_resolves_to_the_loaded_models_family(request, tmp_path, fixture, guidance, precision):
    path, cache = str(request.getfixturevalue(fixture)), str(tmp_path)
    pipeline = base_models.load_pipeline(base_models.resolve_base_model(path, cache), cache)
    assert base_models.sampling_guidance(None, pipeline) == guidance
    assert base_models.weights_precision("auto", pipeline) == precision
    # What the user states is what runs.
    assert base_models.sampling_guidance(2.0, pipeline) == 2.0
    assert base_models.weights_precision("fp32", pipeline) == "fp32"


def test_auto_is_the_same_run_as_the_resolved_values_its_record_holds():
    auto = TrainConfig(**REQUIRED)
    assert (auto.guidance_scale, auto.save_precision) == (None, "auto")
    recorded = {**auto.to_dict(), "guidance_scale": 4.0, "save_precision": "bf16", "resolution": 1024}
    assert differing_model_fields(recorded, auto) == []
    stated = TrainConfig(**REQUIRED, guidance_scale=3.0, save_precision="fp32")
    assert differing_model_fields(recorded, stated) == ["guidance_scale", "save_precision"]
