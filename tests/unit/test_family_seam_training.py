"""The training and sampling side of the family seam: the Trainer (training/),
generation/sampling.py, the load_model phase and generate ask the family (families/) for the
denoiser, the objective, the latents and the sampler, and name none of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dreambooth_job"
# The recipe (training/'s Trainer and its set-up, inputs, encoding, batches and state), the sampler,
# the load_model phase and generate. (tests/unit/test_family_seam.py reads every other module's code;
# this test reads these modules' docstrings and comments too.)
RECIPE = ("trainer", "setup", "inputs", "encoding", "batches", "state")
ASKING_THE_FAMILY = [*(PACKAGE / "training" / f"{name}.py" for name in RECIPE),
                     PACKAGE / "phases" / "load_model.py", *sorted((PACKAGE / "generation").glob("*.py"))]
# A module, a scheduler, a pipeline class or a family by name.
FAMILY_FACTS = re.compile(r"\.unet\b|\bUNet|DDPM|DPMSolver|\w+Scheduler\b|StableDiffusion\w*|"
                          r"Flux\w*Pipeline|[\"']sdxl?[\"']")


@pytest.mark.parametrize("path", ASKING_THE_FAMILY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_module_names_no_family_fact(path):
    found = [f"{path.name}:{n}: {line.strip()}" for n, line in
             enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if FAMILY_FACTS.search(line)]
    assert not found, "ask the family (families/README.md) instead:\n" + "\n".join(found)
