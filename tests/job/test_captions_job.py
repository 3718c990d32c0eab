"""Captions per photo through the Trainer and the job: each instance image's own prompt reaches
the text encoder (the token ids encoded for each row of a batch are its photo's caption's, cached
or encoded at the step), --caption-dropout swaps in the instance prompt from (seed, step) alone so
runs repeat and resume bitwise, the class images keep the class prompt; and `train` against the
real S3 server with captions beside the photos and in captions.jsonl, on SD, SDXL, FLUX.2 [klein]
and FLUX.1, records each photo's prompt in result.json, shows it on the run page and trains other
weights than the same run without captions; a caption that is not UTF-8 is exit 2 naming its
file."""

from __future__ import annotations

import copy
import functools
import json

import jsonschema
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.bench.architectures import build_pipeline
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage
from dreambooth_job.training.batches import picked_indices
from dreambooth_job.training.trainer import Trainer

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=2, steps=3, warmup=0,
                    prior_preservation=True, seed=0)
CAPTIONS = ["a sks dog on grass", "sks, a dog asleep", "a sks dog running", "sks, a dog in snow"]


@functools.cache
def tiny_pipeline():
    return build_pipeline("tiny", seed=0)


def trainer(captions: list[str] | None = CAPTIONS, **overrides) -> Trainer:
    config = bench_config(SETTINGS, Variant("test", {"log_every": 1, "learning_rate": 1e-3, **overrides}))
    built = Trainer(config, copy.deepcopy(tiny_pipeline()), instance_images=_images(SETTINGS, 0),
                    instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                    class_prompt="a dog", instance_captions=captions)
    built.setup()
    return built


def ids_of(built: Trainer, prompt: str) -> tuple:
    return built.family.tokenize(built.pipeline, prompt)


def test_each_photos_caption_reaches_the_text_encoder_and_class_images_keep_the_class_prompt():
    built = trainer(cache_latents=False)
    encoded: list[tuple] = []
    encode = built.inputs.encoder.prompt
    built.inputs.encoder.prompt = lambda ids: encoded.append(ids) or encode(ids)
    for step in range(3):
        encoded.clear()
        built.loss(step)
        instance_ids, class_ids = encoded
        photos = picked_indices(len(CAPTIONS), "instance", step, 2, 0)
        expected = torch.cat([ids_of(built, CAPTIONS[i])[0] for i in photos])
        assert torch.equal(instance_ids[0], expected)
        assert torch.equal(class_ids[0], ids_of(built, "a dog")[0])
    # The photos of one batch differ, and so do the prompts encoded for them.
    assert len({CAPTIONS[i] for i in picked_indices(4, "instance", 0, 2, 0)}) == 2


def test_the_embedding_cache_keys_on_the_caption():
    built = trainer(caption_dropout=0.5)
    assert list(built.inputs.cache.captions) == [*CAPTIONS, "a sks dog"]
    for step in range(4):
        rows = built.inputs.embeddings("instance", step).hidden_states
        for row, prompt in zip(rows, built.inputs.batch_prompts(step)):
            with torch.no_grad():
                alone = built.inputs.encoder.prompt(ids_of(built, prompt)).hidden_states[0]
            torch.testing.assert_close(row, alone)


def test_caption_dropout_is_drawn_from_the_seed_and_step_and_resumes_bitwise():
    steps = range(40)
    first, again = trainer(caption_dropout=0.5).inputs, trainer(caption_dropout=0.5).inputs
    dropping = [first.batch_prompts(s) for s in steps]
    assert dropping == [again.batch_prompts(s) for s in steps]
    flat = [p for batch in dropping for p in batch]
    assert 0 < flat.count("a sks dog") < len(flat) and set(flat) <= {*CAPTIONS, "a sks dog"}
    never = trainer().inputs
    assert all(p != "a sks dog" for s in steps for p in never.batch_prompts(s))
    assert all(p == "a sks dog" for p in trainer(caption_dropout=1.0).inputs.batch_prompts(0))

    whole, parts = trainer(caption_dropout=0.5), trainer(caption_dropout=0.5)
    whole.train()
    parts.train(2)
    parts.train(1)
    unwrap = parts.accelerator.unwrap_model
    for a, b in zip(unwrap(whole.models.denoiser).state_dict().values(),
                    unwrap(parts.models.denoiser).state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("captions", [CAPTIONS, None], ids=["captioned", "uncaptioned"])
def test_dropout_to_the_empty_prompt_sends_the_empty_prompt_to_the_text_encoder(captions):
    """--caption-dropout-prompt empty: a dropped photo's row is the empty prompt's token ids, the
    others their caption's (or without captions, the instance prompt's); the class rows keep the
    class prompt; the draw is --caption-dropout's own, so the same photos drop as with instance."""
    built = trainer(captions, cache_latents=False, caption_dropout=0.5, caption_dropout_prompt="empty")
    dropping_instance = trainer(cache_latents=False, caption_dropout=0.5).inputs
    encoded: list[tuple] = []
    encode = built.inputs.encoder.prompt
    built.inputs.encoder.prompt = lambda ids: encoded.append(ids) or encode(ids)
    kinds = set()
    for step in range(8):
        encoded.clear()
        built.loss(step)
        instance_ids, class_ids = encoded
        photos = picked_indices(len(CAPTIONS), "instance", step, 2, 0)
        as_instance = dropping_instance.batch_prompts(step)
        prompts = ["" if dropped == "a sks dog" else (captions[i] if captions else "a sks dog")
                   for i, dropped in zip(photos, as_instance)]
        assert built.inputs.batch_prompts(step) == prompts
        kinds |= {p == "" for p in prompts}
        expected = torch.cat([ids_of(built, prompt)[0] for prompt in prompts])
        assert torch.equal(instance_ids[0], expected)
        assert torch.equal(class_ids[0], ids_of(built, "a dog")[0])
    assert kinds == {True, False}  # both kinds of row were seen
    cached = trainer(captions, caption_dropout=0.5, caption_dropout_prompt="empty").inputs.cache
    assert list(cached.captions) == [*(captions or ["a sks dog"]), ""]


SMALL = ["--resolution", "32", "--max-train-steps", "2", "--no-prior-preservation",
         "--sample-steps", "2", "--num-validation-images", "1", "--sample-every", "2",
         "--metrics-port", "0", "--log-format", "text", "--identifier", "sks",
         "--caption-dropout", "0.25"]


@pytest.fixture
def captioned_photos(bucket, photo_dir):
    """Four photos: 00 captioned beside it, 01 and 02 in captions.jsonl, 03 without a caption."""
    (photo_dir / "00.txt").write_text("a photo of [trigger] on the {class_noun} bed\n")
    (photo_dir / "captions.jsonl").write_text(
        json.dumps({"file": "01.jpg", "caption": "a {class_noun} on grass"}) + "\n"
        + json.dumps({"file": "02.jpg", "caption": "{identifier} {class_noun} asleep"}) + "\n")
    return upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")


def train(photos: str, run: str, base_model, tmp_path) -> None:
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(base_model), "--cache-dir", str(tmp_path / "cache"),
        "--train-mode", "lora", "--lora-rank", "2"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl_model", "tiny_flux2_klein_model",
                                   "tiny_flux1_model"])
def test_a_run_trains_on_each_photos_caption_and_shows_them(captioned_photos, bucket, model,
                                                             request, tmp_path):
    run = f"s3://{bucket}/runs/captions-{model}/"
    train(captioned_photos, run, request.getfixturevalue(model), tmp_path)
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    jsonschema.validate(result, result_module.schema())
    assert result["photos"]["used"] == ["00.jpg", "01.jpg", "02.jpg", "03.jpg"]
    assert result["photos"]["rejected"] == []  # caption files are not rejected photos
    assert result["prompts"]["captions"] == {"00.jpg": "a photo of sks on the dog bed",
                                             "01.jpg": "sks, a dog on grass",
                                             "02.jpg": "sks dog asleep"}
    assert result["config"]["caption_dropout"] == 0.25
    page = storage.read_bytes(storage.join(run, "index.html")).decode()
    assert "00.jpg<br><q class='caption'>a photo of sks on the dog bed</q>" in page
    assert "<figcaption>03.jpg</figcaption>" in page


def test_a_caption_not_utf8_is_exit_2_naming_the_file(bucket, photo_dir, tiny_model, tmp_path):
    (photo_dir / "01.txt").write_bytes(b"\xff\xfe a dog")
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/bad-caption/")
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--instance-data", photos, "--class-noun", "dog",
        "--output", f"s3://{bucket}/runs/bad-caption/", "--base-model", str(tiny_model),
        "--cache-dir", str(tmp_path / "cache")])
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert "caption file 01.txt is not UTF-8 (byte 0)" in outcome.output


def test_captions_change_what_the_job_trains(captioned_photos, bucket, photo_dir, tiny_model, tmp_path):
    plain = upload_photos(photo_dir, f"s3://{bucket}/photos/plain/")
    for name in ("00.txt", "captions.jsonl"):
        storage.delete(storage.join(plain, name))
    runs = {}
    for name, photos in (("captioned", captioned_photos), ("plain", plain)):
        runs[name] = f"s3://{bucket}/runs/{name}/"
        train(photos, runs[name], tiny_model, tmp_path)
    # The tensors, not the file: its header names the subject (the prefix).
    lora = {name: safetensors.torch.load(
        storage.read_bytes(storage.join(run, "lora/pytorch_lora_weights.safetensors")))
        for name, run in runs.items()}
    assert lora["captioned"].keys() == lora["plain"].keys()
    assert any(not torch.equal(lora["captioned"][k], lora["plain"][k]) for k in lora["plain"])
    plain_result = json.loads(storage.read_bytes(storage.join(runs["plain"], "result.json")))
    assert "captions" not in plain_result["prompts"]


@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl_model", "tiny_flux2_klein_model",
                                   "tiny_flux1_model"])
def test_every_family_trains_dropped_photos_on_the_empty_prompt(bucket, photo_dir, model, request,
                                                                tmp_path, monkeypatch):
    """Photos without captions, every one dropped: each family tokenizes and encodes the empty
    prompt, and only the empty prompt reaches the instance rows."""
    from dreambooth_job.training.inputs import TrainingInputs

    texts: list[str] = []
    embeddings = TrainingInputs._caption_embeddings
    monkeypatch.setattr(TrainingInputs, "_caption_embeddings",
                        lambda self, batch: texts.extend(batch) or embeddings(self, batch))
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    run = f"s3://{bucket}/runs/empty-{model}/"
    outcome = CliRunner().invoke(main, [
        "train", *SMALL, "--caption-dropout", "1", "--caption-dropout-prompt", "empty",
        "--instance-data", photos, "--class-noun", "dog", "--output", run,
        "--base-model", str(request.getfixturevalue(model)), "--cache-dir", str(tmp_path / "cache"),
        "--train-mode", "lora", "--lora-rank", "2"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    assert texts == [""] * 2  # two steps, one photo each
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    assert result["config"]["caption_dropout_prompt"] == "empty"
