"""The class-image cache is shared and writable by other jobs: nothing in it is trusted.

Against the real S3 server (and a local directory), with the tiny pipeline generating the images.
"""

from __future__ import annotations

import hashlib
import io
import logging

import pytest
from helpers import png_bomb
from PIL import Image

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.generation import sampling
from dreambooth_job.storage import places as storage
from dreambooth_job.training import base_models, prior_images

RESOLUTION = 64
COUNT = 3


@pytest.fixture(scope="module")
def pipeline(tiny_model, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("model-cache"))
    base = base_models.resolve_base_model(str(tiny_model), cache)
    return sampling.fast_pipeline(base_models.load_pipeline(base, cache))


def prepare(pipeline, class_data: str, count: int = COUNT) -> prior_images.ClassImages:
    config = TrainConfig(class_data=class_data, resolution=RESOLUTION, num_class_images=count,
                         sample_steps=2, sample_batch_size=COUNT)
    return prior_images.prepare_class_images(pipeline, config, model_fingerprint="tiny", class_prompt="a dog")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def square(colour: str, side: int = RESOLUTION) -> bytes:
    return png(Image.new("RGB", (side, side), colour))


def record(name: str, data: bytes) -> bytes:
    """What `sha256sum NAME` prints: the record format of the cache."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def with_record(data: bytes) -> tuple[bytes, bytes]:
    return data, record("00001.png", data)


@pytest.fixture(params=["s3", "local"])
def class_data(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "class-cache")
    return f"s3://{request.getfixturevalue('bucket')}/class-cache"


def test_each_generated_image_gets_its_own_sha256_record_and_is_reused(pipeline, class_data):
    first = prepare(pipeline, class_data, count=2)
    topped_up = prepare(pipeline, class_data, count=COUNT)
    assert (topped_up.generated, topped_up.reused) == (1, 2)
    for i in range(COUNT):
        name = prior_images.image_name(i)
        data = storage.read_bytes(storage.join(first.cache_uri, name))
        assert storage.read_bytes(storage.join(first.cache_uri, name + ".sha256")) == record(name, data)
    again = prepare(pipeline, class_data)
    assert (again.generated, again.reused, again.rejected) == (0, COUNT, [])
    assert [im.tobytes() for im in again.images] == [im.tobytes() for im in topped_up.images]


POISONS = {
    # name: (image bytes, record bytes; None keeps the genuine record, b"" deletes it), reason
    "bomb over Pillow's limit": ((png_bomb(20000), None), "sha256 differs"),
    "bomb with a matching record": (with_record(png_bomb(8900)), "more than 4096 pixels"),
    "bomb over Pillow's limit with a matching record": (with_record(png_bomb(20000)), "too many pixels"),
    "substituted image": ((square("red"), None), "sha256 differs"),
    "wrong size with a matching record": (with_record(square("red", 32)), "32x32, not 64x64"),
    "not a PNG with a matching record": (with_record(b"GIF89a" + bytes(100)), "not a decodable image"),
    "huge object with a matching record": (
        with_record(bytes(1_000_000)), "bytes, more than"),
    "image without a record": ((None, b""), "no sha256 record"),
    "malformed record": ((None, b"yes it is fine\n"), "malformed sha256 record"),
}


@pytest.mark.parametrize("poison", POISONS, ids=str)
def test_poisoned_class_images_are_regenerated_never_trusted(pipeline, bucket, poison, caplog):
    class_data = f"s3://{bucket}/class-cache"
    genuine = prepare(pipeline, class_data)
    (image, image_record), reason = POISONS[poison]
    image_uri = storage.join(genuine.cache_uri, "00001.png")
    if image is not None:
        storage.write_bytes(image_uri, image)
    if image_record == b"":
        storage.delete(image_uri + ".sha256")
    elif image_record is not None:
        storage.write_bytes(image_uri + ".sha256", image_record)

    with caplog.at_level(logging.WARNING, logger="dreambooth_job.training.prior_images"):
        healed = prepare(pipeline, class_data)
    assert (healed.generated, healed.reused) == (1, COUNT - 1)
    assert [bad.file for bad in healed.rejected] == ["00001.png"]
    assert reason in healed.rejected[0].reason
    assert any("00001.png" in r.getMessage() and "regenerat" in r.getMessage() for r in caplog.records)
    assert [(im.size, im.mode) for im in healed.images] == [((RESOLUTION, RESOLUTION), "RGB")] * COUNT
    assert healed.images[1].tobytes() != Image.new("RGB", (RESOLUTION, RESOLUTION), "red").tobytes()
    # The cache is whole again: the regenerated image and its record were written back.
    final = prepare(pipeline, class_data)
    assert (final.generated, final.reused) == (0, COUNT)
