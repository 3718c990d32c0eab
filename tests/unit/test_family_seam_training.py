"""The training and sampling side of the family seam: the Trainer (training/), sampling.py, the
load_model phase and generate ask the family (families/) for the denoiser, the objective, the
latents and the sampler, and name none of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dreambooth_job"
ASKING_THE_FAMILY = [*sorted((PACKAGE / "training").glob("*.py")), PACKAGE / "sampling.py",
                     PACKAGE / "phases" / "model.py", *sorted((PACKAGE / "generation").glob("*.py"))]
# A module, a scheduler, a pipeline class or a family by name.
FAMILY_FACTS = re.compile(r"\.unet\b|\bUNet|DDPM|DPMSolver|\w+Scheduler\b|StableDiffusion\w*|"
                          r"Flux\w*Pipeline|[\"']sdxl?[\"']")


@pytest.mark.parametrize("path", ASKING_THE_FAMILY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_module_names_no_family_fact(path):
    found = [f"{path.name}:{n}: {line.strip()}" for n, line in
             enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if FAMILY_FACTS.search(line)]
    assert not found, "ask the family (families/README.md) instead:\n" + "\n".join(found)
