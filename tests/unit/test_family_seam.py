"""The family seam holds: outside `families/` (and the tiny/bench model builders) no code names a
model family ("sd", "sdxl"), a diffusers pipeline or denoiser class (StableDiffusionXLPipeline,
UNet2DConditionModel, ...) or the UNet (`pipeline.unet`, a "unet" key). Such code asks the family
(`ModelFamily`) instead, so that the next family is files under families/ and the model builders.

Read with ast, so comments and docstrings may still explain what the families are: only names,
attribute accesses and string constants that code uses count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dreambooth_job"

# Where family facts belong: the families themselves, and the model builders, code that only
# builds models of given architectures: the tiny test models, the bench's published architectures,
# and the toy world's base models (toyworld/base.py builds an SD-architecture UNet and pipeline and
# pretrains it with its own loop into the shipped fixture, as tiny_models.py builds the test
# fixtures; toyworld/flow_base.py assembles the FLUX.2 [klein]-shaped one from tiny_models.py's klein
# builders and names no class; the toy world's experiments train them through the job like any
# base model).
EXEMPT = {"families", "devtools/tiny_models.py", "bench/architectures.py", "toyworld/base.py"}


FAMILY_NAMES = {"sd", "sdxl"}
CLASS_NAME = re.compile(r"^(StableDiffusion\w*Pipeline|UNet\d\w*Model|\w*Transformer2DModel)$")
DENOISER_WORD = "unet"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (documentation, not code)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings: a bare string right after an assignment
        for field in ("body", "orelse"):
            statements = getattr(node, field, None)
            for stmt in statements if isinstance(statements, list) else []:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    ids.add(id(stmt.value))
    return ids


def violations(source: str) -> list[str]:
    """What in `source` names a family, a pipeline/denoiser class or the UNet, as "line: what"."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Attribute) and (node.attr.lower() == DENOISER_WORD
                                                or CLASS_NAME.match(node.attr)):
            what = f"attribute .{node.attr}"
        elif isinstance(node, ast.Name) and CLASS_NAME.match(node.id):
            what = f"name {node.id}"
        elif isinstance(node, ast.alias) and CLASS_NAME.match(node.name.split(".")[-1]):
            what = f"import {node.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.strip()
            if text.lower() == DENOISER_WORD or text in FAMILY_NAMES or CLASS_NAME.match(text):
                what = f"string {node.value!r}"
        if what:
            found.append(f"{getattr(node, 'lineno', '?')}: {what}")
    return found


def _checked(path: Path) -> bool:
    relative = path.relative_to(PACKAGE).as_posix()
    return not any(relative == e or relative.startswith(e + "/") for e in EXEMPT)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _checked(p))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_module_asks_the_family(path):
    found = violations(path.read_text(encoding="utf-8"))
    assert not found, (f"{path.relative_to(PACKAGE)} uses family facts outside families/ "
                       f"(ask the ModelFamily instead): {found}")


def test_pending_and_exempt_paths_exist():
    """A renamed module must not silently leave the allow-lists (and the check) behind."""
    for relative in EXEMPT:
        assert (PACKAGE / relative).exists(), relative


@pytest.mark.parametrize("code", [
    "pipeline.unet(x)", "modules['unet']", "family = 'sdxl'", "if name == 'sd': pass",
    "from diffusers import StableDiffusionXLPipeline",
    "import diffusers\nmodel = diffusers.UNet2DConditionModel(**config)",
    "cls = 'StableDiffusionPipeline'", "x = {'unet': 1}",
])
def test_the_guard_sees_family_facts_in_code(code):
    assert violations(code)


@pytest.mark.parametrize("code", [
    '"""Trains the UNet of a StableDiffusionXLPipeline; "sd" and "sdxl" are families."""',
    "# pipeline.unet is the denoiser\nx = 1",
    "def f():\n    '''sdxl'''\n    return family.denoiser(pipeline)",
    "name = 'sd-full'", "path = 'unet/config.json'",
])
def test_the_guard_leaves_docs_and_neutral_code_alone(code):
    assert not violations(code)
