"""Evaluator end to end on the tiny SD pipeline with tiny random DINO and CLIP models."""

from __future__ import annotations

import pytest
from helpers import random_image as photo

from dreambooth_job.evaluation import gauges, metrics_block, scores
from dreambooth_job.evaluation.evaluator import METRICS, Evaluator
from dreambooth_job.exit_codes import InvalidInputError


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline, tiny_dino_dir, tiny_clip_dir, tiny_lpips_dir, tmp_path_factory):
    from dreambooth_job.config.train_config import TrainConfig

    config = TrainConfig(
        class_noun="dog", dino_model=str(tiny_dino_dir), clip_model=str(tiny_clip_dir),
        lpips_model=str(tiny_lpips_dir), cache_dir=str(tmp_path_factory.mktemp("cache")),
        resolution=32, sample_steps=2, images_per_prompt=2, eval_max_prompts=2,
        eval_class_images=2, sample_batch_size=4)
    evaluator = Evaluator.load(config)
    photos = [photo(i) for i in range(3)]
    return evaluator, photos, evaluator.evaluate(tiny_pipeline, photos, "sks", "dog", label="base")


def test_every_metric_is_scored_with_the_protocol(evaluated):
    _, _, row = evaluated
    assert row["label"] == "base" and row["unavailable"] == {}
    for metric in METRICS:
        assert isinstance(row[metric], float), metric
    for metric in ("dino", "clip_i", "clip_t", "pres"):
        assert -1.0 <= row[metric] <= 1.0
    assert row["div"] > 0 and 0 <= row["div_dino"] <= 2
    assert row["images"] == 2 * 2 + 2
    assert [p["prompt"] for p in row["per_prompt"]] == [
        "a sks dog in the jungle", "a sks dog wearing a rainbow scarf"]
    protocol = row["protocol"]
    assert protocol["prompt_set"] == "live" and protocol["images_per_prompt"] == 2
    assert protocol["seeds"] == [0, 1] and protocol["class_seeds"] == [10_000, 10_001]
    assert protocol["prompts"] == ["a {identifier} {class_noun} in the jungle",
                                   "a {identifier} {class_noun} wearing a rainbow scarf"]
    assert {m: protocol["models"][m]["loaded"] for m in ("dino", "clip", "lpips")} == {
        "dino": True, "clip": True, "lpips": True}
    assert protocol["div_fallback"] is None


def test_fixed_seeds_reproduce_the_numbers(evaluated, tiny_pipeline):
    evaluator, photos, row = evaluated
    again = evaluator.evaluate(tiny_pipeline, photos, "sks", "dog", label="finetuned")
    assert {m: again[m] for m in METRICS} == {m: row[m] for m in METRICS}
    block = metrics_block(row, again)
    assert set(block) == {"base", "finetuned", "protocol"} and "protocol" not in block["base"]
    assert gauges(again)["dino"] == row["dino"]
    assert set(gauges(again, prefix="base_")) == {f"base_{m}" for m in METRICS}


def test_identical_images_embed_to_similarity_one(evaluated):
    evaluator, photos, _ = evaluated
    for encoder in (evaluator.dino, evaluator.clip):
        same = encoder.embed_images([photos[0], photos[0].copy()])
        assert scores.mean_within_similarity(same) == pytest.approx(1.0, abs=1e-5)


def test_real_reference_row(evaluated):
    evaluator, photos, _ = evaluated
    real = evaluator.real_reference(photos)
    assert isinstance(real["dino"], float) and isinstance(real["clip_i"], float)
    single = evaluator.real_reference(photos[:1])
    assert single["unavailable"]["dino"] == "needs at least two photos"


def test_missing_models_leave_metrics_unavailable_without_sampling(eval_config, tmp_path, photos):
    config = eval_config(dino_model=str(tmp_path / "nowhere"),
                         clip_model="openai/clip-vit-base-patch32")
    evaluator = Evaluator.load(config)
    row = evaluator.evaluate(None, photos, "sks", "dog", label="base")  # no pipeline: no sampling
    assert all(row[m] is None for m in METRICS) and row["images"] == 0
    assert "does not exist" in row["unavailable"]["dino"]
    assert "cannot load --clip-model" in row["unavailable"]["clip_t"]
    assert row["unavailable"]["div"] == "no --lpips-model given"
    assert row["protocol"]["models"]["dino"] == {
        "source": str(tmp_path / "nowhere"), "loaded": False, "reason": row["unavailable"]["dino"]}


def test_without_lpips_div_falls_back_under_another_name(eval_config, tiny_pipeline, photos):
    evaluator = Evaluator.load(eval_config(clip_model=None, images_per_prompt=2, eval_max_prompts=1,
                                           eval_class_images=0))
    row = evaluator.evaluate(tiny_pipeline, photos, "sks", "backpack", label="finetuned")
    assert row["div"] is None and isinstance(row["div_dino"], float)
    assert "see div_dino" in row["unavailable"]["div"]
    assert row["unavailable"]["pres"] == "--eval-class-images is 0"
    assert row["protocol"]["prompt_set"] == "object" and row["protocol"]["div_fallback"]


@pytest.mark.parametrize("overrides", [{"images_per_prompt": 0}, {"eval_max_prompts": -1},
                                       {"eval_class_images": -2}, {"prompt_set": "animals"}])
def test_bad_options_are_invalid_input(eval_config, overrides):
    with pytest.raises(InvalidInputError):
        Evaluator.load(eval_config(**overrides))
