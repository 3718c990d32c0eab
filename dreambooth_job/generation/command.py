"""`dreambooth-job generate`: images from a finished run.

    dreambooth-job generate --model s3://runs/dog-42/ --output s3://gen/dog-42/ \\
        --prompt "a {identifier} {class_noun} on the moon" --num-images 8 --seed 7
    dreambooth-job generate --model s3://runs/dog-42/lora/ --output ./gen --sampler euler --steps 30

Exit 0 once the images, grid.png and generation.json are written; 2 for bad input (an option, a
--model that holds no finished run or not the weights named, a malformed result.json, a base
model or VAE it records that is no location or lies outside the operator's prefixes, checked
before any download); 75 when storage is unreachable.
"""

from __future__ import annotations

import click

from dreambooth_job import log
from dreambooth_job.generation.generate_config import generate_options, resolve
from dreambooth_job.generation.run import RECORD_FILE
from dreambooth_job.generation.run import generate as run


@click.command("generate")
@generate_options
def generate(**params) -> None:
    """Draw images with a finished run's weights: PNGs, grid.png and generation.json to --output."""

    config = resolve(params)
    config.validate(require_inputs=True)
    log.configure(config.log_format)
    record = run(config)
    images = sum(len(p["images"]) for p in record["prompts"])
    click.echo(f"wrote {images} image(s), {record['grid']} and {RECORD_FILE} to {config.output}")
