"""Model families: what differs between Stable Diffusion generations, behind one interface.

A `ModelFamily` (base.py) says how prompts become the UNet's conditioning (`tokenize`,
`encode_prompt`, `unet_conditioning`), which pipeline class loads and samples (`load_pipeline`,
`generate`), how the result is saved (`save_pipeline`), which modules fine-tuning updates
(`trainable_modules`) and the native resolution. Training (train.py), class images and validation
grids (sampling.py, used by priors.py), evaluation and bench reach the model only through it;
`models.load_pipeline` picks the family from the base model's model_index.json (`detect`), and
code handed a pipeline asks `for_pipeline`. SD 1.x/2.x (sd.py) is the first family.

    >>> family = detect("/models/sd15")              # reads /models/sd15/model_index.json
    >>> ids = family.tokenize(pipeline, "a photo of sks dog")
    >>> unet_kwargs = family.unet_conditioning(family.encode_prompt(
    ...     family.text_encoders(pipeline), ids, "cpu"), torch.float32)

SDXL (sdxl.py) is the second family:
- `pipeline_classes = ("StableDiffusionXLPipeline",)`, `text_encoder_names = ("text_encoder",
  "text_encoder_2")`; `load_pipeline`/`generate` use `StableDiffusionXLPipeline`.
- `tokenize` returns the ids of both tokenizers; `encode_prompt` concatenates the penultimate
  hidden states of both encoders and keeps the second one's pooled output as
  `PromptEmbeddings.pooled` (caching, batching and `expand`/`cat` carry it).
- `unet_conditioning` adds `added_cond_kwargs={"text_embeds": pooled, "time_ids": ...}`. The
  time ids come from each training image's `ImageGeometry` (base.py: the photo's
  `original_size`, which data.Photo records, the crop offset `square_crop_at` returned, the
  resolution), which only families with `size_conditioned` take, as the `geometry` keyword (one
  entry per image of the batch). The Trainer keeps the original sizes (`instance_sizes`) and the
  crops beside the pixels and passes the geometry of the images `_pick` chose; SD keeps its
  signature.
Besides, the class-image cache key (training/prior_images.py) holds the family's name when it is not SD's, and
the LoRA writer (outputs/weight_files.py) writes SDXL's adapters, both encoders', in diffusers' format and in
kohya's SDXL keys (the UNet's original block names), and `single_file_text_encoders` gives each
family's text encoders in its original checkpoint layout for --export-single-file
(export/single_file.py).

A `TrainMode` (base.py) says what trains and what is saved: `FULL_FINE_TUNE`, or LoRA
(lora_mode.py: adapters on the UNet's --lora-target-modules and, when they train, the text
encoders' attention projections; the base frozen). `train_mode(config)` picks it from
--train-mode; the Trainer takes it (`Trainer(..., mode=...)`, default: the config's). The
optimizer and the loop are unchanged: they see only parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.base import FULL_FINE_TUNE, ModelFamily, PromptEmbeddings, TrainMode
from dreambooth_job.families.lora_mode import LoraTrainMode
from dreambooth_job.families.sd import StableDiffusion
from dreambooth_job.families.sdxl import StableDiffusionXL

FAMILIES: tuple[ModelFamily, ...] = (StableDiffusion(), StableDiffusionXL())

__all__ = ["FAMILIES", "FULL_FINE_TUNE", "ModelFamily", "PromptEmbeddings", "TrainMode", "detect",
           "for_class_name", "for_pipeline", "train_mode"]


def supported() -> str:
    return ", ".join(f"{c} ({f.name})" for f in FAMILIES for c in f.pipeline_classes)


def for_class_name(class_name, what: str) -> ModelFamily:
    """The family loading pipelines of `class_name`; InvalidInputError naming it otherwise.
    `what` names the model in that error, e.g. "--base-model s3://b/m"."""
    for family in FAMILIES:
        if class_name in family.pipeline_classes:
            return family
    if class_name is None:
        raise InvalidInputError(f"{what} names no pipeline class (_class_name in model_index.json); "
                                f"supported: {supported()}")
    raise InvalidInputError(f"{what} is a {repr(class_name)[:120]} pipeline, which is not supported; "
                            f"supported: {supported()}")


def detect(path: str, cache_dir: str | None = None, source: str | None = None) -> ModelFamily:
    """The family of the diffusers pipeline at `path` (a directory, or a hub id whose
    model_index.json diffusers fetches), from model_index.json's `_class_name`. An unknown or
    unreadable index is invalid input naming `source` (default: `path`); a hub id that cannot be
    fetched raises diffusers' OSError."""
    source = source or path
    index = Path(path, "model_index.json")
    if index.is_file():
        try:
            config = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"--base-model {source}: model_index.json is not JSON ({exc})") from None
    else:
        from diffusers import DiffusionPipeline  # deferred: diffusers is heavy

        config = DiffusionPipeline.load_config(path, cache_dir=str(Path(cache_dir or ".", "hub")))
    if not isinstance(config, dict):
        raise InvalidInputError(f"--base-model {source}: model_index.json is not a JSON object")
    return for_class_name(config.get("_class_name"), f"--base-model {source}")


def for_pipeline(pipeline) -> ModelFamily:
    """The family of an already built or loaded pipeline, from its class."""
    return for_class_name(type(pipeline).__name__, "the pipeline")


def train_mode(config) -> TrainMode:
    """The TrainMode --train-mode names."""
    if config.train_mode == "lora":
        return LoraTrainMode.from_config(config)
    return FULL_FINE_TUNE
