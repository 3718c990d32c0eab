"""`dreambooth-job generate`'s work: draw images with a finished run's weights and write them.

    from dreambooth_job.generation import GenerateConfig, generate
    record = generate(GenerateConfig(model="s3://runs/dog-42/", output="s3://gen/dog-42/",
                                     prompts=["a {identifier} {class_noun} on the moon"]))

Under --output: `prompt-<p>-seed-<seed>.png` per image (p: the prompt's index, two digits), grid.png
(rows: prompts, columns: seeds) and generation.json, what was generated with what, written last:
a prefix without it is a generation still running or one that died. Image i of a prompt has seed
--seed + i and its initial noise is drawn on the CPU from that seed alone (generation/sampling.py), so an
image is the same whatever else is generated beside it, on any device. --model and --output are
checked against the operator's prefixes of this process (the pod's) before anything is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from dreambooth_job import __version__, families
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.option_fields import check_bounds
from dreambooth_job.config.subject_identifier import format_prompt
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import ModelFamily
from dreambooth_job.generation.generate_config import AUTO_SAMPLER, GenerateConfig, location_problems
from dreambooth_job.generation.source import RunSource, find_run, load_pipeline
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import places as storage
from dreambooth_job.training import base_models, devices

logger = logging.getLogger("dreambooth_job")

RECORD_FILE = "generation.json"
GRID_FILE = "grid.png"
RECORD_VERSION = 1


def _check_recorded_resolution(config: GenerateConfig, resolution: int) -> None:
    """The run's recorded resolution is a tenant's value: within --resolution's bounds, or exit 2."""
    field = next(f for f in dataclasses.fields(config) if f.name == "resolution")
    try:
        check_bounds(field, resolution)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--model {config.model}: the run records resolution {resolution}, "
                                f"which generate cannot draw ({exc}); pass --resolution") from None


def image_name(prompt_index: int, seed: int) -> str:
    return f"prompt-{prompt_index:02d}-seed-{seed}.png"


def generate(config: GenerateConfig) -> dict[str, Any]:
    """Generate and write everything; returns generation.json's content."""
    from dreambooth_job.generation import sampling  # deferred: sampling imports PIL

    config.validate(require_inputs=True)
    policy = OperatorPolicy.from_env()  # the pod's: the generate Job carries the operator's env
    problems = location_problems(config, policy)
    if problems:
        raise InvalidInputError("; ".join(problems))
    source = find_run(config.model, policy)  # bad --model fails before any model is loaded
    check_output(config.output, source)
    prompts = [format_prompt(p, source.identifier, source.class_noun) for p in config.prompts]
    if config.resolution is None and source.resolution is not None:
        _check_recorded_resolution(config, source.resolution)  # before the model loads
    pipeline = load_pipeline(source, config.cache_dir)
    resolution = base_models.training_resolution(config.resolution or source.resolution, pipeline)
    config = dataclasses.replace(
        config, guidance_scale=base_models.sampling_guidance(config.guidance_scale, pipeline))
    sampler = use_sampler(pipeline, families.for_pipeline(pipeline), config.sampler)
    device = devices.pick_device()
    pipeline.to(device)
    seeds = [config.seed + i for i in range(config.num_images)]
    logger.info("generating %d image(s) of %d prompt(s) at %d px with %s (%s)", config.images,
                len(prompts), resolution, source.weights_uri, sampler)
    images = sampling.generate_images(
        pipeline, [p for p in prompts for _ in seeds], seeds * len(prompts), resolution=resolution,
        num_inference_steps=config.steps, guidance_scale=config.guidance_scale,
        batch_size=config.batch_size)
    rows = [images[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]
    record = _record(dataclasses.replace(config, sampler=sampler), source, prompts, seeds, resolution,
                     str(device))
    record_uri = storage.join(config.output, RECORD_FILE)
    # An earlier generation's record goes first: a crash below must not leave it describing
    # images that are no longer the ones beside it.
    storage.delete(record_uri)
    with tempfile.TemporaryDirectory(prefix="dreambooth-generate-") as work:
        for p, row in enumerate(rows):
            for seed, image in zip(seeds, row):
                image.save(Path(work, image_name(p, seed)))
        sampling.image_grid(rows, prompts).save(Path(work, GRID_FILE))
        storage.upload_dir(Path(work), config.output)
    storage.write_bytes(record_uri, json.dumps(record, indent=2).encode())
    logger.info("wrote %d image(s), %s and %s to %s", config.images, GRID_FILE, RECORD_FILE,
                config.output)
    return record


def check_output(output: str, source: RunSource) -> None:
    """Refuse an --output that would write into the run's published weights (model/, lora/)."""
    def parts(uri: str) -> list[str]:
        return [p for p in uri.split("/") if p not in ("", ".")]

    inside = parts(output)
    for weights in ("model", "lora"):
        published = parts(storage.join(source.run, weights))
        if inside[:len(published)] == published:
            raise InvalidInputError(f"--output {output} is inside the run's {weights}/: the images "
                                    "would change the run's published weights; write them elsewhere")


def use_sampler(pipeline, family: ModelFamily, sampler: str) -> str:
    """Swap in the scheduler `sampler` names (one of the family's `samplers`; auto: its default),
    from the pipeline's own scheduler config (its betas and prediction type), and turn the progress
    bars off; the sampler's name. A name of another family's is invalid input naming --sampler."""
    name = next(iter(family.samplers)) if sampler == AUTO_SAMPLER else sampler
    if name not in family.samplers:
        raise InvalidInputError(f"--sampler {name} is not one of this {family.name} model's: "
                                f"{', '.join(family.samplers)}")
    pipeline.scheduler = family.sampling_scheduler(pipeline, name)
    pipeline.set_progress_bar_config(disable=True)
    return name


def _record(config: GenerateConfig, source: RunSource, prompts: list[str], seeds: list[int],
            resolution: int, device: str) -> dict[str, Any]:
    """generation.json: enough to draw every image again, redacted like result.json."""
    return redact_value({
        "schema_version": RECORD_VERSION,
        "package_version": __version__,
        "model": config.model,
        "run": source.run,
        "weights": source.weights,
        "weights_uri": source.weights_uri,
        "base_model": source.base_model if source.weights == "lora" else None,
        "identifier": source.identifier,
        "class_noun": source.class_noun,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "resolution": resolution,
        "seeds": seeds,
        "device": device,
        "grid": GRID_FILE,
        "prompts": [{"template": template, "prompt": prompt,
                     "images": [{"file": image_name(p, seed), "seed": seed} for seed in seeds]}
                    for p, (template, prompt) in enumerate(zip(config.prompts, prompts))],
    })
