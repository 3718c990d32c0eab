"""TrainConfig's first options: where the photos, the output and the base model are, the prompts,
prior preservation and what is done to the photos. A base of `TrainConfig` (train_config.py), split
out only to keep modules small: the field order, and so every generated file, is TrainConfig's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job.config import choices as const
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, Place, option


def default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dreambooth-job")


@dataclass(kw_only=True)
class InputOptions:
    """The inputs, prompts, prior preservation and data options of `TrainConfig`."""

    # --- inputs and outputs -------------------------------------------------------------------
    instance_data: str | None = option(
        MODEL, required=True, evaluation=True, place=Place.LOCATION,
        help="s3://bucket/prefix/ or local directory with the subject photos (jpg, jpeg, png, webp).")
    class_noun: str | None = option(
        MODEL, required=True, evaluation=True, max_length=const.MAX_WORD_LENGTH,
        help="The subject's class, e.g. 'dog' or 'backpack'.")
    output: str | None = option(
        OPERATIONAL, required=True, place=Place.LOCATION,
        help="s3://bucket/prefix/ or local directory that receives model/, samples/, result.json.")
    base_model: str = option(
        MODEL, const.DEFAULT_BASE_MODEL, evaluation=True, place=Place.MODEL,
        help="Diffusers pipeline to fine-tune: a hub id, a local directory or an s3:// prefix.")
    vae: str | None = option(
        MODEL, place=Place.MODEL,
        help="A diffusers AutoencoderKL (hub id, directory or s3:// prefix holding its "
             "config.json) replacing the base model's VAE, e.g. SDXL's fp16-fix VAE. Without it "
             "the VAE never runs in fp16 (fp32, or bf16 under bf16 mixed precision).")
    cache_dir: str = option(
        OPERATIONAL, default_factory=default_cache_dir, evaluation=True, place=Place.LOCATION,
        set_by_pod=True, help="Local directory for downloaded base models and other caches.")
    job_id: str | None = option(
        OPERATIONAL, pattern=const.JOB_ID, max_length=128,
        help="Id of this run in logs, metrics and result.json (default: derived from subject id).")
    subject_id: str | None = option(
        OPERATIONAL, pattern=const.ID, max_length=63,
        help="Id of the subject (default: last path component of --instance-data).")

    # --- prompts --------------------------------------------------------------------------------
    identifier: str = option(
        MODEL, "auto", evaluation=True, max_length=const.MAX_WORD_LENGTH,
        help="Rare token naming the subject, or 'auto' to pick a rare single token of the "
             "model's tokenizer deterministically.")
    instance_prompt: str = option(
        MODEL, "a {identifier} {class_noun}", must_contain="{identifier}",
        max_length=const.MAX_PROMPT_LENGTH,
        help="Prompt of the subject photos.")
    class_prompt: str = option(
        MODEL, "a {class_noun}", evaluation=True, max_length=const.MAX_PROMPT_LENGTH,
        help="Prompt of the prior-preservation images.")
    caption_dropout: float = option(
        MODEL, 0.0, minimum=0, maximum=1,
        help="Probability that a captioned photo trains on the plain instance prompt (or with "
             "--caption-dropout-prompt empty, the empty prompt) instead of its caption at a step "
             "(drawn from --seed and the step). Captions: a dog1.txt beside dog1.jpg, or "
             "captions.jsonl under --instance-data.")
    caption_dropout_prompt: str = option(
        MODEL, const.CAPTION_DROPOUT_PROMPTS[0], choices=const.CAPTION_DROPOUT_PROMPTS,
        help="What --caption-dropout trains a dropped photo on: instance (--instance-prompt) or "
             "empty (the empty prompt, as kohya's and ai-toolkit's caption dropout; also for "
             "photos without a caption, so it applies without captions too).")

    # --- prior preservation ---------------------------------------------------------------------
    prior_preservation: bool = option(
        MODEL, True, help="Add the class-specific prior-preservation loss (the paper's default).")
    prior_loss_weight: float = option(
        MODEL, 1.0, minimum=0, help="Weight (lambda) of the prior-preservation loss.")
    num_class_images: int = option(
        MODEL, 200, minimum=0, help="Number of class images for prior preservation.")
    class_data: str | None = option(
        OPERATIONAL, place=Place.LOCATION, help="s3:// prefix or directory caching class images across jobs "
                          "(default: <cache-dir>/class-images).")

    # --- data -----------------------------------------------------------------------------------
    resolution: int | None = option(
        MODEL, minimum=8, maximum=const.MAX_RESOLUTION, multiple_of=8, evaluation=True,
        ceiling="max_resolution",
        help="Training resolution in pixels (square; default auto: the base model's native "
             "resolution, its UNet's sample size times the VAE's scale: 512 for SD 1.x, 768 for "
             "SD 2.x at 768 px, 1024 for SDXL).")
    center_crop: bool = option(
        MODEL, True, flag="--center-crop/--random-crop", help="Crop photos at the centre or at random.")
    random_flip: bool = option(MODEL, False, help="Flip photos horizontally at random.")
    aspect_buckets: bool = option(
        MODEL, False,
        help="Train each photo at the aspect-ratio bucket nearest its own (about --resolution "
             "squared in area, sides multiples of the model's latent granularity) instead of a "
             "square crop; batches are drawn within one bucket. Class images stay square.")
    min_images: int = option(
        OPERATIONAL, 1, minimum=1, evaluation=True, help="Fail when fewer valid subject photos remain.")
    min_image_side: int = option(
        MODEL, 256, minimum=1, evaluation=True, help="Reject photos whose shorter side is below this.")
    max_image_pixels: int = option(
        MODEL, 80_000_000, minimum=1, evaluation=True,
        help="Reject photos with more pixels than this (decompression-bomb guard).")
    max_photos: int = option(
        OPERATIONAL, 100, minimum=1, evaluation=True,
        help="Fail (exit 2) before downloading when --instance-data holds more photos than this.")
    max_photos_bytes: int = option(
        OPERATIONAL, 1 << 30, minimum=1, evaluation=True,
        help="Fail (exit 2) before downloading when the photos under --instance-data add up "
             "to more bytes than this.")
