"""The family facts that sizing, memory, bench and the published LoRA files ask the family for
(ModelFamily's sizing/memory/formats section): read from the model, never from its name."""

from __future__ import annotations

import json

import pytest

from dreambooth_job import families

FAMILY = {f.name: f for f in families.FAMILIES}


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_detect_local_reads_model_index_whatever_the_directory_is_called(tmp_path, family):
    for name in ("sdxl-base", "sd15", "model"):
        model = tmp_path / family.name / name
        model.mkdir(parents=True)
        (model / "model_index.json").write_text(json.dumps({"_class_name": family.pipeline_classes[0]}))
        assert families.detect_local(str(model)) is family


@pytest.mark.parametrize("index", [None, "not json", json.dumps(["a list"]),
                                   json.dumps({"_class_name": "QwenImagePipeline"}), json.dumps({})])
def test_detect_local_is_none_for_what_it_cannot_tell(tmp_path, index):
    if index is not None:
        (tmp_path / "model_index.json").write_text(index)
    assert families.detect_local(str(tmp_path)) is None


@pytest.mark.parametrize("base_model", ["stabilityai/stable-diffusion-xl-base-1.0",
                                        "s3://models/sdxl/", "", None])
def test_detect_local_never_reads_a_name(base_model):
    assert families.detect_local(base_model) is None


def test_each_family_has_its_own_class_cache_tag():
    tags = [f.class_cache_tag() for f in families.FAMILIES]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_lora_files_start_with_the_denoiser_and_cover_the_text_encoders(family):
    """The denoiser first, then text encoders; one whose LoRA files hold no text encoder
    (FLUX.2: diffusers' file holds the transformer only) is tested below."""
    components = family.lora_format.components
    assert components[0] == family.denoiser_name
    assert set(components[1:]) <= set(family.text_encoder_names)


def test_text_encoder_lora_that_the_files_cannot_hold_is_refused_when_the_model_loads(
        tiny_flux2_klein_model, tmp_path):
    from dreambooth_job.exit_codes import InvalidInputError
    from dreambooth_job.outputs import weight_files

    family = families.detect(str(tiny_flux2_klein_model))
    assert set(family.text_encoder_names) - set(family.lora_format.components)
    pipeline = family.load_pipeline(str(tiny_flux2_klein_model), str(tmp_path))
    with pytest.raises(InvalidInputError, match="--train-text-encoder with --train-mode lora: "
                                                "flux2-klein's LoRA files hold no adapters of text_encoder"):
        weight_files.check_exportable(pipeline, single_file=False, lora_text_encoders=True)
    weight_files.check_exportable(pipeline, single_file=False, lora_text_encoders=False)


@pytest.mark.parametrize(("name", "builder"), [("sd", "build_tiny_pipeline"),
                                               ("sdxl", "build_tiny_sdxl_pipeline")])
def test_components_name_the_denoiser_the_vae_and_the_text_encoders(tmp_path, name, builder):
    from dreambooth_job.bench.estimate import parameter_counts
    from dreambooth_job.devtools import tiny_models

    pipeline = getattr(tiny_models, builder)(tmp_path)
    family = families.for_pipeline(pipeline)
    assert family is FAMILY[name]
    parts = family.components(pipeline)
    assert list(parts) == ["denoiser", "vae", *family.text_encoder_names]
    assert parts["denoiser"] is getattr(pipeline, family.denoiser_name)
    counts = parameter_counts(pipeline)
    assert counts["denoiser"] == sum(p.numel() for p in parts["denoiser"].parameters())
    assert counts["text_encoders"] == sum(p.numel() for n in family.text_encoder_names
                                          for p in parts[n].parameters())


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_reference_counts_make_larger_families_need_more(family):
    reference = family.reference
    assert reference.total == reference.denoiser + reference.text_encoders + reference.vae
    assert 0 < reference.lora_adapters_rank16 < reference.denoiser // 10
