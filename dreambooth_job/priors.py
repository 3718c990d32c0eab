"""Class images for the prior-preservation loss, generated once per (model, class prompt, settings)
and shared through a cache: many subjects of class "dog" trained overnight reuse one set.

Cache layout: `<class-data>/<key>/NNNNN.png` plus `meta.json`. The key hashes everything that changes
the images; image i is always generated from seed `seed + i`, so a partly filled cache (a job that
was preempted, or a later job asking for more images) is topped up, never regenerated.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreambooth_job import sampling, storage
from dreambooth_job.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ClassImages:
    images: list[Image.Image]
    generated: int
    reused: int
    cache_uri: str
    cache_key: str


def class_cache_root(config: TrainConfig) -> str:
    return config.class_data or str(Path(config.cache_dir, "class-images"))


def cache_key(*, model_fingerprint: str, class_prompt: str, resolution: int, sampler: str,
              steps: int, guidance_scale: float, seed: int) -> str:
    """Identity of a class-image set: equal keys mean interchangeable images."""
    inputs = dict(model=model_fingerprint, prompt=class_prompt, resolution=resolution,
                  sampler=sampler, steps=steps, guidance_scale=guidance_scale, seed=seed)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def prepare_class_images(pipeline, config: TrainConfig, *, model_fingerprint: str,
                         class_prompt: str) -> ClassImages:
    """Reuse what the cache holds, generate the rest with `pipeline`, and add them to the cache."""
    key = cache_key(model_fingerprint=model_fingerprint, class_prompt=class_prompt,
                    resolution=config.resolution, sampler=sampling.SAMPLER,
                    steps=config.sample_steps, guidance_scale=config.guidance_scale, seed=config.seed)
    cache_uri = storage.join(class_cache_root(config), key)
    wanted = [image_name(i) for i in range(config.num_class_images)]
    cached = {f.relative_path for f in storage.list_files(cache_uri, [".png"])}
    images: dict[int, Image.Image] = {}
    for i, name in enumerate(wanted):
        if name in cached:
            data = storage.read_bytes(storage.join(cache_uri, name))
            images[i] = Image.open(io.BytesIO(data)).convert("RGB")
    reused = len(images)
    missing = [i for i in range(config.num_class_images) if i not in images]
    if missing:
        log.info("generating %d class images for %r (%d reused from %s)",
                 len(missing), class_prompt, reused, cache_uri)
        storage.write_bytes(storage.join(cache_uri, "meta.json"), json.dumps(dict(
            class_prompt=class_prompt, model_fingerprint=model_fingerprint, resolution=config.resolution,
            sampler=sampling.SAMPLER, steps=config.sample_steps, guidance_scale=config.guidance_scale,
            seed=config.seed), indent=2).encode())
    for start in range(0, len(missing), config.sample_batch_size):
        batch = missing[start:start + config.sample_batch_size]
        generated = sampling.generate_images(
            pipeline, [class_prompt] * len(batch), [config.seed + i for i in batch],
            resolution=config.resolution, num_inference_steps=config.sample_steps,
            guidance_scale=config.guidance_scale, batch_size=len(batch))
        for i, image in zip(batch, generated):
            # Uploaded batch by batch: a preempted job leaves a usable partial cache behind.
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            storage.write_bytes(storage.join(cache_uri, image_name(i)), buffer.getvalue())
            images[i] = image
    return ClassImages([images[i] for i in range(config.num_class_images)], len(missing), reused,
                       cache_uri, key)
