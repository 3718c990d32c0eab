"""What each training step feeds the denoiser: the images of each set (instance, class), their
pixels (centre crops as tensors once, random crops each step), where each crop came from
(size-conditioned families take it), the latents the family makes of the VAE's posterior, and the
prompt embeddings, from the cache (encoding.py) or encoded at the step: the set's prompt, or with
captions (captions.py) each instance image's own, the instance prompt (or the empty prompt,
--caption-dropout-prompt) where --caption-dropout drops it. Every random draw comes from the
step's generator, in a fixed order: which images and flips (batches.pick), the random crop, then
the posterior sample; caption dropout draws from its own (batches.caption_dropped). With
--aspect-buckets (buckets.py) each instance image trains at its bucket, cropped once (centre) or
each step (random), its batch drawn within one bucket; class images stay square at the resolution.
"""
from __future__ import annotations

import torch
from PIL import Image

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families import ModelFamily, PromptEmbeddings
from dreambooth_job.families.base import ImageGeometry
from dreambooth_job.training import buckets
from dreambooth_job.training.batches import caption_dropped, center_crops, pick, picked_indices, random_crops
from dreambooth_job.training.encoding import EncodedCache, Encoder
from dreambooth_job.training.subject_photos import cover_size, to_tensor


class TrainingInputs:
    """The image sets by name ("instance", and "class" with prior preservation), with each image's
    size as uploaded and its set's prompt; `captions`: each instance image's own prompt, or None
    (every instance image trains on the set's prompt)."""

    def __init__(self, config: TrainConfig, family: ModelFamily, pipeline, encoder: Encoder, *,
                 images: dict[str, list[Image.Image]], original_sizes: dict[str, list[tuple[int, int]]],
                 prompts: dict[str, str], captions: list[str] | None = None):
        self.config, self.family, self.encoder = config, family, encoder
        self.images, self.original_sizes = images, original_sizes
        self.buckets = self._assign_buckets(pipeline) if config.aspect_buckets else None
        self.pixels, self.center_crops = self._prepare_pixels()
        self.prompt_ids = {name: family.tokenize(pipeline, prompt) for name, prompt in prompts.items()}
        self.instance_prompt = prompts["instance"]
        # What a dropped caption trains on (--caption-dropout-prompt): the instance prompt, or the
        # empty prompt, which replaces the instance prompt of photos without a caption too.
        self.dropped_prompt = "" if config.caption_dropout_prompt == "empty" else self.instance_prompt
        if captions is None and self.dropped_prompt != self.instance_prompt:
            captions = [self.instance_prompt] * len(images["instance"])
        self.captions = captions
        # Each distinct prompt an instance image may train on, tokenized (and cached) once.
        self.caption_ids = ({text: family.tokenize(pipeline, text)
                             for text in dict.fromkeys([*captions, self.dropped_prompt])}
                            if captions is not None else {})
        self.cache = EncodedCache.build(config, encoder, self.pixels, self.prompt_ids,
                                        self.caption_ids)

    def _assign_buckets(self, pipeline) -> list[tuple[int, int]]:
        """Each instance image's bucket (width, height), by the aspect ratio it was uploaded at."""
        res, granularity = self.config.resolution, self.family.latent_granularity(pipeline)
        buckets.check_resolution(res, granularity)
        sizes = buckets.bucket_sizes(res, granularity)
        return [buckets.nearest_bucket(size, sizes) for size in self.original_sizes["instance"]]

    def target(self, name: str, index: int) -> tuple[int, int]:
        """The (width, height) image `index` of set `name` trains at."""
        if name == "instance" and self.buckets is not None:
            return self.buckets[index]
        return self.config.resolution, self.config.resolution

    def _prepare_pixels(self) -> tuple[dict, dict[str, list[tuple[int, int]]]]:
        """Centre-cropped images become tensors once (a list of each bucket's size with
        --aspect-buckets); random crops stay PIL images until each step."""
        if not self.config.center_crop:
            return self.images, {}
        pixels, crops = {}, {}
        for name, images in self.images.items():
            if name == "instance" and self.buckets is not None:
                taken = [buckets.bucket_crop_at(image, target, True)
                         for image, target in zip(images, self.buckets)]
                pixels[name] = [to_tensor(crop) for crop, _ in taken]
                crops[name] = [top_left for _, top_left in taken]
            else:
                pixels[name], crops[name] = center_crops(images, self.config.resolution)
        return pixels, crops

    def indices(self, name: str, step: int) -> list[int]:
        """The images of set `name` that step `step` trains on: within one bucket with buckets."""
        c = self.config
        if name == "instance" and self.buckets is not None:
            return buckets.bucket_batch(self.buckets, c.train_batch_size, c.seed, step)
        return picked_indices(len(self.images[name]), name, step, c.train_batch_size, c.seed)

    def latents(self, name: str, step: int,
                generator: torch.Generator) -> tuple[torch.Tensor, list[ImageGeometry]]:
        """The batch of set `name` at `step`: its latents, and where each image came from."""
        c = self.config
        indices, flips = pick(len(self.pixels[name]), name, step, c.train_batch_size, c.seed,
                              c.random_flip, generator, self.indices(name, step))
        if self.cache.latents is not None:
            params = torch.stack([self.cache.latents[name + ("_flipped" if f else "")][i]
                                  for i, f in zip(indices, flips)])
            crops = [self.center_crops[name][i] for i in indices]
        else:
            pixels, crops = self._batch_pixels(name, indices, flips, generator)
            params = self.encoder.latent_params(pixels)
        device = self.encoder.device
        mean, logvar = params.to(device).chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator).to(device)
        geometry = [self._geometry(name, i, crop, f) for i, crop, f in zip(indices, crops, flips)]
        return self.family.encode_latents(self.encoder.models.vae, mean + std * noise), geometry

    def _batch_pixels(self, name, indices, flips,
                      generator) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        if self.config.center_crop:
            pixels = [self.pixels[name][i] for i in indices]
            crops = [self.center_crops[name][i] for i in indices]
        elif name == "instance" and self.buckets is not None:
            pixels, crops = buckets.random_bucket_crops(
                [self.pixels[name][i] for i in indices], [self.buckets[i] for i in indices], generator)
        else:
            pixels, crops = random_crops([self.pixels[name][i] for i in indices],
                                         self.config.resolution, generator)
        return torch.stack([p.flip(-1) if f else p for p, f in zip(pixels, flips)]), crops

    def _geometry(self, name: str, index: int, crop: tuple[int, int], flipped: bool) -> ImageGeometry:
        res, (width, height) = self.config.resolution, self.target(name, index)
        top, left = crop
        if flipped:
            # A mirrored crop sits as far from the right edge as the crop did from the left.
            size = self.images[name][index].size
            cover = (buckets.cover_size(size, (width, height)) if (width, height) != (res, res)
                     else cover_size(size, res))
            left = cover[0] - width - left
        return ImageGeometry(self.original_sizes[name][index], (top, left), (height, width))

    def embeddings(self, name: str, step: int) -> PromptEmbeddings:
        """Set `name`'s prompt embeddings at `step`, one row per image of the batch."""
        batch = self.config.train_batch_size
        if name == "instance" and self.captions is not None:
            return self._caption_embeddings(self.batch_prompts(step))
        if self.cache.embeddings is not None:
            return self.cache.embeddings[name].expand(batch)
        return self.encoder.prompt(self.prompt_ids[name]).expand(batch)

    def batch_prompts(self, step: int) -> list[str]:
        """The prompt of each instance image of `step`'s batch: its caption (the instance prompt
        where the image has none), or where caption dropout drops it, the dropped prompt."""
        c, captions = self.config, self.captions or []
        indices = self.indices("instance", step)
        dropped = caption_dropped(c.seed, step, c.train_batch_size, c.caption_dropout)
        return [self.dropped_prompt if drop else captions[i] for i, drop in zip(indices, dropped)]

    def _caption_embeddings(self, texts: list[str]) -> PromptEmbeddings:
        if self.cache.captions is not None:
            return PromptEmbeddings.cat([self.cache.captions[text] for text in texts])
        ids = [self.caption_ids[text] for text in texts]
        return self.encoder.prompt(tuple(torch.cat(parts) for parts in zip(*ids)))
