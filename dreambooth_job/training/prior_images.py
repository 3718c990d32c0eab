"""Class images for the prior-preservation loss, generated once per (model, class prompt, settings)
and shared through a cache: many subjects of class "dog" trained overnight reuse one set.

Cache layout: `<class-data>/<key>/NNNNN.png`, each with `NNNNN.png.sha256` (`sha256sum` format),
plus `meta.json`. The key hashes everything that changes the images; image i is always generated
from seed `seed + i`, so a partly filled cache (a job that was preempted, or a later job asking for
more images) is topped up, never regenerated. The cache is shared and writable by other jobs, so
nothing in it is trusted: an image is reused only when its own record (one small object per
image, so concurrent top-ups cannot lose one another's) holds its sha256 and it decodes, within
the photos' guards, to exactly the resolution asked for. Any other image is regenerated.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dreambooth_job import families
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.generation import sampling
from dreambooth_job.storage import places as storage
from dreambooth_job.training import base_models
from dreambooth_job.training.subject_photos import Rejected, UnusableImage, open_image

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".sha256"
_RECORD_MAX_BYTES = 256
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass
class ClassImages:
    images: list[Image.Image]
    generated: int
    reused: int
    cache_uri: str
    cache_key: str
    rejected: list[Rejected] = field(default_factory=list)
    """Cached images not reused, and why; they were regenerated."""


def class_cache_root(config: TrainConfig) -> str:
    return config.class_data or str(Path(config.cache_dir, "class-images"))


def cache_key(*, model_fingerprint: str, class_prompt: str, resolution: int, sampler: str,
              steps: int, guidance_scale: float, seed: int, family: str | None = None) -> str:
    """Identity of a class-image set: equal keys mean interchangeable images. `family` is the
    ModelFamily's `class_cache_tag()`: None for the first family, so that the keys of caches
    written before families existed stay what they were."""
    inputs = dict(model=model_fingerprint, prompt=class_prompt, resolution=resolution,
                  sampler=sampler, steps=steps, guidance_scale=guidance_scale, seed=seed)
    if family is not None:
        inputs["family"] = family
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def record_of(name: str, data: bytes) -> bytes:
    """The record of one cached image, as `sha256sum` writes it (`sha256sum -c` checks it)."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def max_png_bytes(resolution: int) -> int:
    """More than an RGB PNG of resolution x resolution can take even stored uncompressed."""
    return 3 * resolution * resolution + resolution + 65536


def recorded_digest(record: bytes, name: str) -> str:
    """The sha256 a record holds for image `name`; UnusableImage if it is not such a record."""
    fields = record.decode("ascii", "replace").split()
    if len(fields) != 2 or fields[1] != name or not _DIGEST.fullmatch(fields[0]):
        raise UnusableImage("malformed sha256 record")
    return fields[0]


def load_cached_image(cache_uri: str, name: str, listed: dict[str, storage.StoredFile],
                      resolution: int) -> Image.Image:
    """Cached image `name` if its record vouches for it and it is a resolution-square PNG;
    otherwise UnusableImage saying why. Sizes are checked from the listing before any read."""
    record, image = listed.get(name + RECORD_SUFFIX), listed[name]
    if record is None:
        raise UnusableImage("no sha256 record")
    if record.size > _RECORD_MAX_BYTES:
        raise UnusableImage(f"sha256 record of {record.size} bytes")
    if image.size > max_png_bytes(resolution):
        raise UnusableImage(f"{image.size} bytes, more than a {resolution}x{resolution} PNG takes")
    try:
        digest = recorded_digest(storage.read_bytes(storage.join(cache_uri, name + RECORD_SUFFIX)), name)
        data = storage.read_bytes(storage.join(cache_uri, name))
    except FileNotFoundError:
        raise UnusableImage("deleted while being read") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise UnusableImage("sha256 differs from its record")
    with open_image(io.BytesIO(data), resolution * resolution, formats=["PNG"]) as png:
        if png.size != (resolution, resolution):
            raise UnusableImage(f"{png.size[0]}x{png.size[1]}, not {resolution}x{resolution}")
        return png.convert("RGB")


def store_cached_image(cache_uri: str, name: str, image: Image.Image) -> None:
    """Write one image, then its record: an image whose record is missing is regenerated."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.write_bytes(storage.join(cache_uri, name), buffer.getvalue())
    storage.write_bytes(storage.join(cache_uri, name + RECORD_SUFFIX), record_of(name, buffer.getvalue()))


def reuse_cached_images(cache_uri: str, count: int, resolution: int) -> tuple[dict, list[Rejected]]:
    """The first `count` cached images that pass `load_cached_image`, by index, and the rejected."""
    listed = {f.relative_path: f for f in storage.list_files(cache_uri, [".png", RECORD_SUFFIX])}
    images: dict[int, Image.Image] = {}
    rejected: list[Rejected] = []
    for i in range(count):
        name = image_name(i)
        if name in listed:
            try:
                images[i] = load_cached_image(cache_uri, name, listed, resolution)
            except UnusableImage as exc:
                rejected.append(Rejected(name, str(exc)))
    for bad in rejected:
        log.warning("class image %s in %s is not reused (%s): regenerating it",
                    bad.file, cache_uri, bad.reason)
    return images, rejected


def prepare_class_images(pipeline, config: TrainConfig, *, model_fingerprint: str,
                         class_prompt: str) -> ClassImages:
    """Reuse what the cache holds, generate the rest with `pipeline`, and add them to the cache.
    --guidance-scale auto is the pipeline's family's (a job's run_config has it resolved already)."""
    family = families.for_pipeline(pipeline).class_cache_tag()
    guidance_scale = base_models.sampling_guidance(config.guidance_scale, pipeline)
    key = cache_key(model_fingerprint=model_fingerprint, class_prompt=class_prompt,
                    resolution=config.resolution, sampler=sampling.sampler_name(pipeline),
                    steps=config.sample_steps, guidance_scale=guidance_scale, seed=config.seed,
                    family=family)
    cache_uri = storage.join(class_cache_root(config), key)
    images, rejected = reuse_cached_images(cache_uri, config.num_class_images, config.resolution)
    reused = len(images)
    missing = [i for i in range(config.num_class_images) if i not in images]
    if missing:
        log.info("generating %d class images for %r (%d reused from %s)",
                 len(missing), class_prompt, reused, cache_uri)
        storage.write_bytes(storage.join(cache_uri, "meta.json"), json.dumps(dict(
            class_prompt=class_prompt, model_fingerprint=model_fingerprint, resolution=config.resolution,
            sampler=sampling.sampler_name(pipeline), steps=config.sample_steps,
            guidance_scale=guidance_scale, seed=config.seed), indent=2).encode())
    for start in range(0, len(missing), config.sample_batch_size):
        batch = missing[start:start + config.sample_batch_size]
        generated = sampling.generate_images(
            pipeline, [class_prompt] * len(batch), [config.seed + i for i in batch],
            resolution=config.resolution, num_inference_steps=config.sample_steps,
            guidance_scale=guidance_scale, batch_size=len(batch))
        for i, image in zip(batch, generated):
            # Uploaded batch by batch: a preempted job leaves a usable partial cache behind.
            store_cached_image(cache_uri, image_name(i), image)
            images[i] = image
    return ClassImages([images[i] for i in range(config.num_class_images)], len(missing), reused,
                       cache_uri, key, rejected)
