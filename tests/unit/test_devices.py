"""One device choice: devices.pick_device decides where models run, for every command."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import dreambooth_job
from dreambooth_job.training import devices

PACKAGE = Path(dreambooth_job.__file__).parent
# metrics/definitions.py reports the memory of every CUDA device the process uses; it chooses none.
ALLOWED = {"training/devices.py", "metrics/definitions.py"}


def test_no_module_but_devices_decides_between_cuda_and_cpu():
    deciding = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr == "is_available"
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "cuda"):
                deciding.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert [d for d in deciding if d.split(":")[0] not in ALLOWED] == []


def test_the_device_is_cuda_exactly_when_torch_has_it():
    assert devices.pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert devices.device_type() == devices.pick_device().type


def test_auto_precision_is_none_on_the_cpu_and_explicit_values_pass_through():
    cpu = torch.device("cpu")
    assert devices.resolve_precision("auto", cpu) == "no"
    assert devices.resolve_precision("bf16", cpu) == "bf16"
