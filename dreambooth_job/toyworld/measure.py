"""The toy world's DreamBooth measurements, computed on pictures a pipeline generates.

- subject fidelity: mean subject match (features.py) of "a [V] ball" pictures;
- prompt fidelity: share of "a [V] ball on a <colour> background" pictures with that background
  (chance: 1/3), and their subject match;
- leakage: mean subject match of plain "a ball" pictures (the class prior; lower is better);
- diversity: mean pairwise distance between the object colours of those "a ball" pictures
  (higher is better), and separately the share of pairs with different backgrounds;
- world fidelity (base model): background, colour and shape accuracy of "a <colour> <shape> on a
  <background> background" over every combination of the world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dreambooth_job.generation import sampling
from dreambooth_job.toyworld import features as feat
from dreambooth_job.toyworld import world

CLASS_NOUN = "ball"
SAMPLE_STEPS = 20
GUIDANCE_SCALE = 7.5


@dataclass
class EvalSize:
    subject_images: int = 8
    """Pictures of "a [V] ball"."""
    context_images: int = 4
    """Pictures per recontextualised background prompt."""
    class_images: int = 32
    """Pictures of "a ball" for leakage and diversity."""
    seed: int = 10_000
    """First sampling seed; disjoint from the class images' seeds (the job's seed + i)."""


def _generate(pipe, prompts: list[str], seed: int) -> list:
    return sampling.generate_images(pipe, prompts, [seed + i for i in range(len(prompts))],
                                    resolution=world.SIZE, num_inference_steps=SAMPLE_STEPS,
                                    guidance_scale=GUIDANCE_SCALE, batch_size=16)


def subject_prompts(token: str) -> dict[str, str]:
    prompts = {"subject": f"a {token} {CLASS_NOUN}", "class": f"a {CLASS_NOUN}"}
    for background in world.BACKGROUNDS:
        prompts[f"on {background}"] = f"a {token} {CLASS_NOUN} on a {background} background"
    return prompts


def dreambooth_metrics(pipe, token: str, size: EvalSize) -> tuple[dict[str, float], dict[str, list]]:
    """The four DreamBooth numbers for `pipe`, and the pictures they were measured on."""
    prompts = subject_prompts(token)
    counts = {"subject": size.subject_images, "class": size.class_images}
    flat: list[tuple[str, str]] = []
    for key, prompt in prompts.items():
        flat += [(key, prompt)] * counts.get(key, size.context_images)
    images = _generate(pipe, [p for _, p in flat], size.seed)
    by_key: dict[str, list] = {}
    for (key, _), image in zip(flat, images):
        by_key.setdefault(key, []).append(image)
    measured = {key: [feat.features(im) for im in ims] for key, ims in by_key.items()}
    context = [(key.removeprefix("on "), f) for key, fs in measured.items() if key.startswith("on ")
               for f in fs]
    metrics = {
        "subject_fidelity": float(np.mean([f.subject_match for f in measured["subject"]])),
        "prompt_fidelity": float(np.mean([f.background == bg for bg, f in context])),
        "context_subject_fidelity": float(np.mean([f.subject_match for _, f in context])),
        "class_leakage": float(np.mean([f.subject_match for f in measured["class"]])),
        "class_diversity": feat.pairwise_diversity(measured["class"]),
        "class_background_diversity": feat.background_diversity(measured["class"]),
    }
    return metrics, by_key


def world_fidelity(pipe, per_combination: int = 2, seed: int = 20_000) -> tuple[dict[str, float], list]:
    """How well a model draws what the world's full captions ask for (chance: 1/3, 1/3, 1/2)."""
    combos = [(s, c, b) for s in world.SHAPES for c in world.COLOURS for b in world.BACKGROUNDS]
    flat = [combo for combo in combos for _ in range(per_combination)]
    images = _generate(pipe, [world.caption(*combo) for combo in flat], seed)
    found = [feat.features(im) for im in images]
    metrics = {
        "background_accuracy": float(np.mean([f.background == b for (_, _, b), f in zip(flat, found)])),
        "colour_accuracy": float(np.mean([f.colour == c for (_, c, _), f in zip(flat, found)])),
        "shape_accuracy": float(np.mean([f.shape == s for (s, _, _), f in zip(flat, found)])),
    }
    return metrics, list(zip(flat, images))
