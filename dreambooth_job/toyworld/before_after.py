"""The demo's evidence on the toy world: the base model and a fine-tuned one measured on the same
prompts and sampling seeds, and one before/after picture of them.

    before, after, figure = compare(ablation, run_dir, token)
    figure.save("before-after.png")     # rows: ROWS' prompts; columns: base, fine-tuned

The measurements are measure.dreambooth_metrics (subject fidelity, class leakage, ...); the
training settings are experiment.train_config's, so the demo trains exactly like the ablation.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dreambooth_job.generation.sampling import LABEL_WIDTH
from dreambooth_job.toyworld import experiment, measure

ROWS = ("subject", "on green", "class")
"""Keys of measure.subject_prompts: `a [V] ball`, `a [V] ball on a green background`, `a ball`."""
COLUMNS = ("base", "fine-tuned")
EVAL_SIZE = measure.EvalSize(subject_images=8, context_images=4, class_images=8)
"""Fewer pictures than the ablation's (8 subject pictures as there, 4 per background, 8 of the
class): enough for subject fidelity and the picture, a few seconds per model on CPU."""


@dataclass(frozen=True)
class Layout:
    """Where each picture sits in the before/after figure (pixels)."""

    per_cell: int = 4
    tile: int = 64
    """Side of one picture: the toy's 32 px shown at 2x (nearest, the pixel art stays sharp)."""
    gap: int = 24
    """White space between the base and the fine-tuned column."""
    header: int = 28
    label_width: int = LABEL_WIDTH

    def cell_width(self) -> int:
        return self.per_cell * self.tile

    def size(self, rows: int = len(ROWS), columns: int = len(COLUMNS)) -> tuple[int, int]:
        width = self.label_width + columns * self.cell_width() + (columns - 1) * self.gap
        return width, self.header + rows * self.tile

    def tile_box(self, row: int, column: int, index: int) -> tuple[int, int, int, int]:
        left = self.label_width + column * (self.cell_width() + self.gap) + index * self.tile
        top = self.header + row * self.tile
        return left, top, left + self.tile, top + self.tile


def compare(ablation: experiment.Ablation, run_dir: Path, token: str,
            layout: Layout = Layout()) -> tuple[dict, dict, Image.Image]:
    """Metrics of the base model and of the model the job wrote to `run_dir` (the same prompts
    and seeds), and the before/after figure."""
    before, before_pictures = measure.dreambooth_metrics(
        experiment.load(ablation.base_model), token, EVAL_SIZE)
    after, after_pictures = measure.dreambooth_metrics(
        experiment.load_trained(ablation, run_dir), token, EVAL_SIZE)
    prompts = measure.subject_prompts(token)
    titles = (f"base model: subject fidelity {before['subject_fidelity']:.2f}",
              f"fine-tuned ({ablation.train_mode}): subject fidelity {after['subject_fidelity']:.2f}")
    figure = before_after_figure([prompts[key] for key in ROWS], titles,
                                 [[before_pictures[key] for key in ROWS],
                                  [after_pictures[key] for key in ROWS]], layout)
    return before, after, figure


def before_after_figure(row_labels: list[str], column_titles: tuple[str, ...],
                        columns: list[list[list[Image.Image]]], layout: Layout) -> Image.Image:
    """columns[c][r] holds the pictures of row r in column c; the first `per_cell` are shown."""
    figure = Image.new("RGB", layout.size(len(row_labels), len(columns)), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for c, title in enumerate(column_titles):
        left, _, _, _ = layout.tile_box(0, c, 0)
        draw.text((left, 8), title, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.multiline_text((6, layout.header + r * layout.tile + 6), textwrap.fill(label, 36),
                            fill="black", font=font)
        for c, column in enumerate(columns):
            for i, picture in enumerate(column[r][:layout.per_cell]):
                box = layout.tile_box(r, c, i)
                figure.paste(picture.resize((layout.tile, layout.tile), Image.NEAREST), box[:2])
    return figure
