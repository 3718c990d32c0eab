"""The evaluation protocol: generate the prompt set's images with fixed seeds, embed them and the
real photos, and score DINO, CLIP-I, CLIP-T, PRES and DIV (see the package docstring)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from dreambooth_job.config.subject_identifier import format_prompt
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.evaluation import prompts as prompt_sets
from dreambooth_job.evaluation import scores
from dreambooth_job.evaluation.encoders import ClipEncoder, DinoEncoder, Unavailable
from dreambooth_job.exit_codes import InvalidInputError, JobError
from dreambooth_job.generation import sampling
from dreambooth_job.training import base_models

log = logging.getLogger(__name__)

METRICS = ("dino", "clip_i", "clip_t", "pres", "div", "div_dino")
MODEL_OF = {"dino": "dino", "clip_i": "clip", "clip_t": "clip", "pres": "dino", "div": "lpips",
            "div_dino": "dino"}
SEED_BASE = 0
"""Image j of every prompt has seed SEED_BASE + j: base and fine-tuned models see the same noise."""
CLASS_SEED_BASE = 10_000
"""PRES images use fresh seeds, so they are never the class images the model was trained on."""
DIV_FALLBACK = ("div_dino: 1 - mean DINO cosine similarity between the images of the same "
                "prompt (reported because LPIPS weights were unavailable; not comparable to the "
                "paper's DIV)")


def validate_config(config: TrainConfig, class_noun: str | None = None) -> None:
    """Raise InvalidInputError for a prompt set that cannot be read; cheap enough for the validate
    phase (TrainConfig itself checks the counts)."""
    prompt_sets.load_prompt_set(config.prompt_set, class_noun or config.class_noun or "")


@dataclass
class Evaluator:
    """The evaluator models of one job, loaded once; `evaluate` may run any number of times."""

    config: TrainConfig
    dino: DinoEncoder | None = None
    clip: ClipEncoder | None = None
    lpips: Any = None
    unavailable_models: dict[str, str] = field(default_factory=dict)
    """"dino" / "clip" / "lpips" -> why that model is not loaded."""

    @classmethod
    def load(cls, config: TrainConfig) -> Evaluator:
        validate_config(config)
        evaluator = cls(config)
        loaders = {"dino": DinoEncoder.load, "clip": ClipEncoder.load, "lpips": _load_lpips}
        for name, loader in loaders.items():
            source = getattr(config, f"{name}_model")
            try:
                setattr(evaluator, name, loader(source, config.cache_dir))
                log.info("evaluator model %s loaded from %s", name, source)
            except (Unavailable, JobError) as exc:
                reason = exc.message if isinstance(exc, JobError) else str(exc)
                evaluator.unavailable_models[name] = reason
                log.warning("evaluator model %s unavailable: %s", name, reason)
        return evaluator

    # ------------------------------------------------------------------------------------------
    def protocol(self, class_noun: str, resolution: int | None = None, *,
                 sampler: str | None = None, guidance_scale: float | None = None) -> dict[str, Any]:
        """Everything that fixes the numbers: prompts, seeds, sampler and evaluator models.
        `resolution`: the sampling resolution when --resolution is auto (the model's native);
        `sampler`: the scheduler class the model's family samples with (sampling.sampler_name);
        `guidance_scale`: the family's when --guidance-scale is auto."""
        config = self.config
        prompt_set = prompt_sets.load_prompt_set(config.prompt_set, class_noun)
        evaluator_models = {}
        for name in ("dino", "clip", "lpips"):
            evaluator_models[name] = {"source": getattr(config, f"{name}_model"),
                                      "loaded": name not in self.unavailable_models}
            if name in self.unavailable_models:
                evaluator_models[name]["reason"] = self.unavailable_models[name]
        return {
            "prompt_set": prompt_set.name,
            "prompts": list(prompt_sets.select(prompt_set.templates, config.eval_max_prompts)),
            "images_per_prompt": config.images_per_prompt,
            "seeds": [SEED_BASE + j for j in range(config.images_per_prompt)],
            "class_prompt": config.class_prompt,
            "class_images": config.eval_class_images,
            "class_seeds": [CLASS_SEED_BASE + j for j in range(config.eval_class_images)],
            "resolution": config.resolution or resolution,
            "sampler": sampler,
            "num_inference_steps": config.sample_steps,
            "guidance_scale": guidance_scale if config.guidance_scale is None else config.guidance_scale,
            "models": evaluator_models,
            "div_fallback": DIV_FALLBACK if "lpips" in self.unavailable_models else None,
        }

    def evaluate(self, pipeline, photos: list[Image.Image], identifier: str, class_noun: str,
                 label: str) -> dict[str, Any]:
        """Sample `pipeline` on the protocol and score it against `photos`; see the package docs."""
        if not photos:
            raise InvalidInputError("evaluation needs at least one real photo of the subject")
        started = time.perf_counter()
        # A job passes its config with auto resolved; `evaluate` resolves it for each model.
        resolution = base_models.training_resolution(self.config.resolution, pipeline)
        # No pipeline (no evaluator model loaded, nothing to sample): no sampler, no family either.
        guidance_scale = (base_models.sampling_guidance(self.config.guidance_scale, pipeline)
                          if pipeline is not None else self.config.guidance_scale)
        sampler = sampling.sampler_name(pipeline) if pipeline is not None else None
        protocol = self.protocol(class_noun, resolution, sampler=sampler, guidance_scale=guidance_scale)
        row: dict[str, Any] = {"label": label, **{m: None for m in METRICS}, "unavailable": {
            m: self.unavailable_models[MODEL_OF[m]] for m in METRICS
            if MODEL_OF[m] in self.unavailable_models}, "images": 0, "per_prompt": []}
        if "div" in row["unavailable"] and self.dino is not None:
            row["unavailable"]["div"] += "; see div_dino"
        if self.dino is None and self.clip is None and self.lpips is None:
            return self._finish(row, protocol, started)

        pipeline = sampling.fast_pipeline(pipeline)

        def generate(texts: list[str], seeds: list[int]) -> list[Image.Image]:
            row["images"] += len(texts)
            return sampling.generate_images(
                pipeline, texts, seeds, resolution=resolution,
                num_inference_steps=self.config.sample_steps,
                guidance_scale=guidance_scale, batch_size=self.config.sample_batch_size)

        templates, seeds = protocol["prompts"], protocol["seeds"]
        prompts = [prompt_sets.subject_prompt(t, identifier, class_noun) for t in templates]
        images = generate([p for p in prompts for _ in seeds], seeds * len(prompts))
        row["per_prompt"] = [{"prompt": p} for p in prompts]
        try:
            if self.dino is not None:
                self.dino.to(pipeline.device)
                self._score_dino(row, photos, images, len(seeds), lambda: generate(
                    [format_prompt(self.config.class_prompt, identifier, class_noun)]
                    * len(protocol["class_seeds"]), protocol["class_seeds"]))
            if self.clip is not None:
                self.clip.to(pipeline.device)
                self._score_clip(row, photos, images, len(seeds),
                                 [prompt_sets.text_prompt(t, class_noun) for t in templates])
            if self.lpips is not None:
                self.lpips.to(pipeline.device)
                groups = [_image_batch(g).to(pipeline.device) for g in _chunks(images, len(seeds))]
                row["div"] = self._within(row, "div", groups, self.lpips)
        finally:
            for model in (self.dino, self.clip, self.lpips):
                if model is not None:
                    model.to("cpu")  # give the accelerator back to training
        return self._finish(row, protocol, started)

    def real_reference(self, photos: list[Image.Image]) -> dict[str, Any]:
        """The paper's "real images" row: DINO and CLIP-I between distinct photos of the subject."""
        row: dict[str, Any] = {"label": "real", "dino": None, "clip_i": None, "unavailable": {}}
        for metric, encoder in (("dino", self.dino), ("clip_i", self.clip)):
            if encoder is None:
                row["unavailable"][metric] = self.unavailable_models[MODEL_OF[metric]]
            elif len(photos) < 2:
                row["unavailable"][metric] = "needs at least two photos"
            else:
                row[metric] = _round(scores.mean_within_similarity(encoder.embed_images(photos)))
        return row

    # ------------------------------------------------------------------------------------------
    def _score_dino(self, row, photos, images, per_prompt: int, class_images) -> None:
        real = self.dino.embed_images(photos)
        fake = self.dino.embed_images(images)
        row["dino"] = scores.mean_cross_similarity(fake, real)
        for entry, group in zip(row["per_prompt"], _chunks(fake, per_prompt)):
            entry["dino"] = _round(scores.mean_cross_similarity(group, real))
        row["div_dino"] = self._within(row, "div_dino", _chunks(fake, per_prompt),
                                       scores.cosine_distance)
        if self.config.eval_class_images:
            row["pres"] = scores.mean_cross_similarity(self.dino.embed_images(class_images()), real)
        else:
            row["unavailable"]["pres"] = "--eval-class-images is 0"

    def _score_clip(self, row, photos, images, per_prompt: int, texts: list[str]) -> None:
        real = self.clip.embed_images(photos)
        fake = self.clip.embed_images(images)
        text = self.clip.embed_texts(texts)
        row["clip_i"] = scores.mean_cross_similarity(fake, real)
        row["clip_t"] = scores.mean_paired_similarity(fake, text.repeat_interleave(per_prompt, 0))
        for i, (entry, group) in enumerate(zip(row["per_prompt"], _chunks(fake, per_prompt))):
            entry["clip_i"] = _round(scores.mean_cross_similarity(group, real))
            entry["clip_t"] = _round(scores.mean_paired_similarity(
                group, text[i:i + 1].expand(per_prompt, -1)))

    @staticmethod
    def _within(row, metric: str, groups, distance) -> float | None:
        if len(groups[0]) < 2:
            row["unavailable"][metric] = "needs --images-per-prompt of at least 2"
            return None
        return scores.mean_group_distance(groups, distance)

    @staticmethod
    def _finish(row, protocol, started) -> dict[str, Any]:
        for metric in METRICS:
            row[metric] = _round(row[metric])
        row.update(seconds=round(time.perf_counter() - started, 3), protocol=protocol)
        return row


def _load_lpips(source: str | None, cache_dir: str):
    from dreambooth_job.evaluation.lpips import LPIPS  # deferred: lpips imports torch

    return LPIPS.load(source, cache_dir)


def _chunks(items, size: int) -> list:
    """Consecutive runs of `size`: the images (or embeddings) of one prompt each."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _image_batch(images: list[Image.Image]):
    import torch  # deferred: torch is heavy

    from dreambooth_job.training.subject_photos import to_tensor  # deferred: subject_photos imports PIL

    return torch.stack([to_tensor(i.convert("RGB")) for i in images])


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
