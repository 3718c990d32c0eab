"""--aspect-buckets through the Trainer and the job, on each family's tiny model: photos of
different aspect ratios reach the denoiser at their buckets' latent sizes (captured at the
denoiser's call: a UNet's sample, FLUX's token position ids), one bucket per batch, class images
square; SDXL's add_time_ids are each photo's size, centre crop and bucket; a run resumed from its
checkpoint ends bitwise as the uninterrupted one; `train` against the real S3 server records
each photo's bucket in result.json on every family; and a bucketed SD job with photos of three
aspect ratios, stopped by SIGTERM and rerun, publishes the uninterrupted run's weights."""

from __future__ import annotations

import copy
import functools
import json

import jsonschema
import pytest
import torch
from click.testing import CliRunner
from helpers import JobProcess, make_photo, upload_photos
from PIL import Image
from test_resilience import COMMON, assert_same_weights, final_weights, interrupt

from dreambooth_job import families
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage
from dreambooth_job.training import buckets
from dreambooth_job.training.subject_photos import cover_size
from dreambooth_job.training.trainer import Trainer

MODELS = ["tiny_model", "tiny_sdxl_model", "tiny_flux2_klein_model", "tiny_flux1_model"]
RESOLUTION = 32
SETTINGS = Settings(model="tiny", base_model=None, resolution=RESOLUTION, batch_size=2, steps=3,
                    warmup=0, prior_preservation=True, seed=0)
# Photos as uploaded (width, height): wide, tall, square and very wide, two of each bucket.
UPLOADED = [(640, 480), (480, 640), (500, 500), (900, 300), (800, 600), (300, 400), (400, 400),
            (1200, 400)]


# One torch thread for the in-process training (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def loaded(path: str, cache_dir: str):
    family = families.detect(path)
    return family, family.load_pipeline(path, cache_dir)


def photos() -> list[Image.Image]:
    """The photos as the job holds them: shorter side at the resolution, a gradient per photo."""
    images = []
    for i, size in enumerate(UPLOADED):
        image = Image.linear_gradient("L").convert("RGB").rotate(45 * i).resize(size)
        images.append(image.resize(cover_size(size, RESOLUTION), Image.BICUBIC))
    return images


def trainer(path, **overrides) -> Trainer:
    family, pipeline = loaded(str(path), str(path.parent / "hub-cache"))
    config = bench_config(SETTINGS, Variant("buckets", {"aspect_buckets": True, "learning_rate": 1e-3,
                                                        "train_mode": "lora", "lora_rank": 2,
                                                        **overrides}))
    built = Trainer(config, copy.deepcopy(pipeline), family=family, instance_images=photos(),
                    instance_sizes=UPLOADED, instance_prompt="a sks dog",
                    class_images=_images(SETTINGS, 1000), class_prompt="a dog")
    built.setup()
    return built


def denoiser_calls(built: Trainer, step: int) -> list[dict]:
    """What the denoiser was called with at `step`: its arguments by name."""
    calls: list[dict] = []
    module = built.accelerator.unwrap_model(built.models.denoiser)
    hook = module.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append({"args": args, **kwargs}), with_kwargs=True)
    try:
        with torch.no_grad():
            built.loss(step)
    finally:
        hook.remove()
    return calls


def latent_grid(call: dict) -> tuple[int, int]:
    """The latent (height, width) a call trains at: a UNet's sample's, or FLUX's token grid by
    its position ids (t, h, w[, l])."""
    if "img_ids" in call:
        ids = call["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids  # klein's are per image, FLUX.1's shared
        rows, columns = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        assert ids.shape[0] == rows * columns == call["hidden_states"].shape[1]
        return rows, columns
    return tuple(call["args"][0].shape[-2:])


@pytest.mark.parametrize("model", MODELS)
def test_each_photos_bucket_reaches_the_denoiser_and_class_images_stay_square(model, request):
    built = trainer(request.getfixturevalue(model))
    granularity = built.family.latent_granularity(built.pipeline)
    # Latent pixels per image pixel: the VAE's for a UNet's sample, the granularity for FLUX's tokens.
    factor = granularity if built.family.denoiser_name == "transformer" else built.pipeline.vae_scale_factor
    sizes = buckets.bucket_sizes(RESOLUTION, granularity)
    expected = [buckets.nearest_bucket(size, sizes) for size in UPLOADED]
    assert built.inputs.buckets == expected and len(set(expected)) == 4
    seen = set()
    for step in range(8):
        indices = built.inputs.indices("instance", step)
        (width, height), = {expected[i] for i in indices}  # one bucket per batch
        seen.add((width, height))
        calls = denoiser_calls(built, step)
        grids = [latent_grid(call) for call in calls]
        square = (RESOLUTION // factor, RESOLUTION // factor)
        if (width, height) == (RESOLUTION, RESOLUTION):
            assert grids == [square]  # instance and class images in one call
        else:
            assert grids == [(height // factor, width // factor), square]
    assert len(seen) >= 3


def test_sdxl_time_ids_are_each_photos_size_crop_and_bucket(tiny_sdxl_model):
    built = trainer(tiny_sdxl_model)
    images = photos()
    for step in range(4):
        indices = built.inputs.indices("instance", step)
        instance_call = denoiser_calls(built, step)[0]
        rows = instance_call["added_cond_kwargs"]["time_ids"][:2].tolist()
        for row, i in zip(rows, indices):
            width, height = built.inputs.buckets[i]
            cover = buckets.cover_size(images[i].size, (width, height))
            top, left = (cover[1] - height) // 2, (cover[0] - width) // 2
            assert row == [UPLOADED[i][1], UPLOADED[i][0], top, left, height, width]
            assert (top, left) == built.inputs.center_crops["instance"][i]
        # Class images: square at the resolution, uncropped.
        class_rows = denoiser_calls(built, step)[-1]["added_cond_kwargs"]["time_ids"][-2:].tolist()
        assert class_rows == [[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]] * 2


def weights(built: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in built.models.trainable]


@pytest.mark.parametrize("model, overrides", [
    ("tiny_model", {"cache_latents": True, "random_flip": True}),
    ("tiny_sdxl_model", {"center_crop": False, "random_flip": True}),
    ("tiny_flux2_klein_model", {}), ("tiny_flux1_model", {"cache_latents": True})])
def test_a_resumed_bucketed_run_ends_bitwise_as_the_uninterrupted_one(model, overrides, request, tmp_path):
    path = request.getfixturevalue(model)
    uninterrupted = trainer(path, **overrides)
    start = weights(uninterrupted)
    uninterrupted.train(2)
    uninterrupted.save_state(tmp_path / "state")
    uninterrupted.train(2)
    resumed = trainer(path, **overrides)
    resumed.load_state(tmp_path / "state", 2)
    resumed.train(2)
    end = weights(uninterrupted)
    assert all(torch.equal(a, b) for a, b in zip(end, weights(resumed)))
    assert not all(torch.equal(a, b) for a, b in zip(start, end))


SHAPES = [(400, 300), (300, 400), (320, 320), (420, 315)]  # three buckets


@pytest.fixture
def bucketed_job(bucket, tmp_path, tiny_model):
    """The job's arguments (test_resilience.py's) with --aspect-buckets, on photos of three
    aspect ratios."""
    directory = tmp_path / "photos"
    for i, size in enumerate(SHAPES):
        make_photo(directory / f"{i:02d}.jpg", seed=i, size=size)
    uploaded = upload_photos(directory, f"s3://{bucket}/photos/shapes/")

    def args(output: str) -> list[str]:
        return [*COMMON, "--instance-data", uploaded, "--base-model", str(tiny_model),
                "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache"),
                "--output", f"s3://{bucket}/{output}/", "--aspect-buckets", "--random-flip",
                "--train-batch-size", "2"]

    return args


def test_a_bucketed_job_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(bucketed_job, bucket,
                                                                              tmp_path):
    reference = JobProcess(bucketed_job("reference"))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]
    interrupt(bucketed_job("preempted"), at_step=6)
    rerun = JobProcess(bucketed_job("preempted"))
    assert rerun.wait() == ExitCode.OK, rerun.output[-3000:]
    assert "resum" in rerun.output.lower()
    result = json.loads(storage.read_bytes(f"s3://{bucket}/reference/result.json"))
    jsonschema.validate(result, result_module.schema())
    sizes = buckets.bucket_sizes(64, 4)  # --resolution 64; the tiny SD model's granularity is 4 px
    assert result["photos"]["buckets"] == {f"{i:02d}.jpg": list(buckets.nearest_bucket(size, sizes))
                                           for i, size in enumerate(SHAPES)}
    assert len({tuple(b) for b in result["photos"]["buckets"].values()}) == 3
    assert_same_weights(final_weights(f"s3://{bucket}/reference/", tmp_path),
                        final_weights(f"s3://{bucket}/preempted/", tmp_path))


SMALL = ["train", "--resolution", "32", "--max-train-steps", "2", "--no-prior-preservation",
         "--sample-steps", "2", "--num-validation-images", "1", "--sample-every", "2",
         "--metrics-port", "0", "--log-format", "text", "--identifier", "sks", "--class-noun", "dog",
         "--train-mode", "lora", "--lora-rank", "2", "--aspect-buckets"]


@pytest.mark.parametrize("model", MODELS)
def test_train_with_buckets_records_each_photos_bucket(model, bucket, request, tmp_path):
    directory = tmp_path / "photos"
    for i, size in enumerate(SHAPES):
        make_photo(directory / f"{i:02d}.jpg", seed=i, size=size)
    photos = upload_photos(directory, f"s3://{bucket}/photos/{model}/")
    run = f"s3://{bucket}/runs/{model}/"
    outcome = CliRunner().invoke(main, [
        *SMALL, "--instance-data", photos, "--output", run, "--cache-dir", str(tmp_path / "cache"),
        "--base-model", str(request.getfixturevalue(model))], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    result = json.loads(storage.read_bytes(storage.join(run, "result.json")))
    jsonschema.validate(result, result_module.schema())
    assert result["config"]["aspect_buckets"] is True
    sizes = buckets.bucket_sizes(32, 4)  # every tiny model's granularity is 4 px
    assert result["photos"]["buckets"] == {f"{i:02d}.jpg": list(buckets.nearest_bucket(size, sizes))
                                           for i, size in enumerate(SHAPES)}
