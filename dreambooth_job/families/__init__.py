"""Model families: what differs between pipeline generations, behind one interface.

A `ModelFamily` (base.py) owns the denoiser and how it is called, the training objective
(objective.py: DDPM's epsilon or v today), latent and prompt encoding, the sampler, loading and
saving, and which modules train; SD 1.x/2.x (sd.py), SDXL (sdxl.py), FLUX.2 [klein]
(flux2.py) and FLUX.1 (flux1.py) implement it. The Trainer
(training/), generation/sampling.py, the phases and `generate` reach the model only through it.
`models.load_pipeline` picks the family from the base model's model_index.json (`detect`); code
handed a pipeline asks `for_pipeline`. A `TrainMode` (base.py; LoRA in lora_mode.py) says what
trains and what is saved: `train_mode(config, family, pipeline)` picks it from --train-mode.

    >>> family = detect("/models/sd15")              # reads /models/sd15/model_index.json
    >>> ids = family.tokenize(pipeline, "a photo of sks dog")
    >>> conditioning = family.denoiser_conditioning(family.encode_prompt(
    ...     family.text_encoders(pipeline), ids, "cpu"), torch.float32)

README.md (beside this file) is the recipe for adding a family, with the list of hooks.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families.base import FULL_FINE_TUNE, ModelFamily, PromptEmbeddings, TrainMode
from dreambooth_job.families.flux1 import Flux1
from dreambooth_job.families.flux2 import Flux2Klein
from dreambooth_job.families.lora_mode import LoraTrainMode
from dreambooth_job.families.sd import StableDiffusion
from dreambooth_job.families.sdxl import StableDiffusionXL

FAMILIES: tuple[ModelFamily, ...] = (StableDiffusion(), StableDiffusionXL(), Flux2Klein(), Flux1())

__all__ = ["FAMILIES", "FULL_FINE_TUNE", "ModelFamily", "PromptEmbeddings", "TrainMode", "detect",
           "detect_local", "for_class_name", "for_pipeline", "train_mode"]


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


def detect_local(base_model: str | None) -> ModelFamily | None:
    """The family of `base_model` when it is a local directory whose model_index.json names a
    known pipeline class; None otherwise (a hub id or S3 prefix, which is not read here, or an
    index that `detect` would refuse at load time). Reads no network. (Sizing a Job reads more:
    an s3:// prefix too, and the denoiser's config for the family's size, training/sized_model.py.)"""
    if not base_model or not Path(base_model, "model_index.json").is_file():
        return None
    try:
        return detect(base_model)  # a local index: read from disk, never fetched
    except (OSError, InvalidInputError):
        return None


def for_pipeline(pipeline) -> ModelFamily:
    """The family of an already built or loaded pipeline, from its class."""
    return for_class_name(type(pipeline).__name__, "the pipeline")


def train_mode(config, family: ModelFamily, pipeline) -> TrainMode:
    """The TrainMode --train-mode names, for `family`'s `pipeline` (LoRA's targets are the family's)."""
    if config.train_mode == "lora":
        return LoraTrainMode.from_config(config, family, pipeline)
    return FULL_FINE_TUNE
