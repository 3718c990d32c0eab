"""The frozen encoders' side of training: VAE posteriors of the training pixels and prompt
embeddings, computed each step or, with --cache-latents, once before the first step. Random crops
change the pixels every step, so only centre-cropped data has its latents cached; the embeddings
are cached unless the text encoders train, with captions each photo's prompt by its text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.families import ModelFamily, PromptEmbeddings
from dreambooth_job.training.setup import TrainedModels

CHUNK = 8
"""Images per VAE call when filling the cache."""


class Encoder:
    """Runs the VAE and the text encoders as `models` holds them now (accelerate's prepared
    modules once the Trainer has prepared them)."""

    def __init__(self, family: ModelFamily, models: TrainedModels, device: torch.device):
        self.family, self.models, self.device = family, models, device

    @torch.no_grad()
    def latent_params(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's mean and log-variance, concatenated on channels."""
        vae = self.models.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.parameters.float()

    def prompt(self, ids: tuple) -> PromptEmbeddings:
        return self.family.encode_prompt(self.models.text_encoders, ids, self.device)

    def offload(self) -> None:
        """Neither the VAE nor the text encoders is needed again until sampling: give their
        device memory to training."""
        self.models.vae.to("cpu")
        for encoder in self.models.text_encoders.values():
            encoder.to("cpu")


@dataclass
class EncodedCache:
    """What --cache-latents computed before the first step; None where nothing is cached."""

    latents: dict | None
    """Posterior parameters per image set ("instance", "class", and "<set>_flipped" for the
    mirror images when flipping), one row per image (with --aspect-buckets, the instance set's a
    list: each image's at its bucket's size)."""
    embeddings: dict[str, PromptEmbeddings] | None
    """Each set's prompt, encoded."""
    captions: dict[str, PromptEmbeddings] | None = None
    """With captions: each prompt an instance image trains on (its caption, and the instance
    prompt that uncaptioned photos use, and the one caption dropout uses), encoded, by its text."""

    @classmethod
    def build(cls, config: TrainConfig, encoder: Encoder, pixels: dict, prompt_ids: dict[str, tuple],
              caption_ids: dict[str, tuple] | None = None) -> EncodedCache:
        latents = (_encode_all(encoder, pixels, config.random_flip)
                   if config.cache_latents and config.center_crop else None)
        embeddings, captions = None, None
        if config.cache_latents and not config.train_text_encoder:
            embeddings = {name: encoder.prompt(ids) for name, ids in prompt_ids.items()}
            captions = {text: encoder.prompt(ids) for text, ids in (caption_ids or {}).items()} or None
        if latents is not None and embeddings is not None:
            encoder.offload()
        return cls(latents, embeddings, captions)


def _encode_all(encoder: Encoder, pixels: dict, flip: bool) -> dict:
    """Posterior parameters of every image (and its mirror image when flipping). A set of images
    of different sizes (a list: --aspect-buckets) is encoded image by image, each entry of its
    bucket's size: an image has one bucket for the whole run, so its index keys its bucket too."""
    cache: dict = {}
    for name, images in pixels.items():
        if isinstance(images, list):
            cache[name] = [encoder.latent_params(image[None])[0] for image in images]
            if flip:
                cache[name + "_flipped"] = [encoder.latent_params(image[None].flip(-1))[0]
                                            for image in images]
            continue
        chunks = range(0, len(images), CHUNK)
        cache[name] = torch.cat([encoder.latent_params(images[i:i + CHUNK]) for i in chunks])
        if flip:
            cache[name + "_flipped"] = torch.cat(
                [encoder.latent_params(images[i:i + CHUNK].flip(-1)) for i in chunks])
    return cache
