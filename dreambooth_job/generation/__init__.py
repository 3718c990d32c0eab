"""`dreambooth-job generate`: images from a finished run (its model/, or its lora/ on the base model
it recorded), locally or as a Kubernetes Job (`submit-generate`, the chart's `mode: generate`).

- generate_config.py: `GenerateConfig`, the options (flags, the Job's args, the chart's `generate:` values);
- source.py: which run and which weights `--model` names, and loading them;
- recorded.py: what generate reads from the run's result.json (a tenant's file): bounded, typed,
  the base model and VAE it records checked against the operator's prefixes;
- run.py: drawing the images and writing them with grid.png and generation.json;
- generation/sampling.py: the one fast sampler shared with class images, validation grids and evaluation;
- command.py: the click command.

Importing this package loads no torch: the Kubernetes commands build generate Jobs with it.
"""

from dreambooth_job.generation.generate_config import GenerateConfig
from dreambooth_job.generation.run import generate as run

__all__ = ["GenerateConfig", "generate"]


def generate(config: GenerateConfig) -> dict:
    """Generate and write the images `config` asks for (run.generate); returns generation.json."""
    return run(config)
