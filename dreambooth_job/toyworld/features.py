"""Hand-made features of a toy-world picture, read straight off its 16x16 cells.

Every picture of the world is one flat object on a flat background, so a few numpy lines recover
what a caption says and what the subject looks like:

- background: the median colour of the outer ring of cells, snapped to the nearest background;
- object: the cells farther than OBJECT_DISTANCE from that colour;
- object colour: the nearest of the world's colours and the subject's two, cell by cell;
- shape: "box" when the object fills at least BOX_FILL of its bounding box (a disc fills pi/4);
- subject match: the share of object cells painted like the subject, magenta left of the
  object's centre column and cyan right of it (1 for the subject's photos, 0.5 for a plain
  magenta or cyan ball, 0 for any ball of the world).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from dreambooth_job.toyworld import world

OBJECT_DISTANCE = 80.0
BOX_FILL = 0.88
PALETTE = {**world.COLOURS, **world.SUBJECT_COLOURS}
_PALETTE_NAMES = list(PALETTE)
_PALETTE = np.array(list(PALETTE.values()), dtype=np.float32)
_BACKGROUND_NAMES = list(world.BACKGROUNDS)
_BACKGROUNDS = np.array(list(world.BACKGROUNDS.values()), dtype=np.float32)


@dataclass(frozen=True)
class Features:
    background: str
    shape: str | None
    """None when no object was found."""
    colour: str | None
    """The most common object colour."""
    histogram: np.ndarray
    """Share of object cells per PALETTE colour (zeros when no object)."""
    subject_match: float


def cells(image: Image.Image) -> np.ndarray:
    """The picture as 16x16 cells (mean of each 2x2 block), float RGB."""
    array = np.asarray(image.convert("RGB").resize((world.SIZE, world.SIZE)), dtype=np.float32)
    factor = world.SIZE // world.CELLS
    return array.reshape(world.CELLS, factor, world.CELLS, factor, 3).mean(axis=(1, 3))


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.argmin(((colours[..., None, :] - palette) ** 2).sum(-1), axis=-1)


def features(image: Image.Image) -> Features:
    grid = cells(image)
    ring = np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])
    background = np.median(ring, axis=0)
    mask = np.linalg.norm(grid - background, axis=-1) > OBJECT_DISTANCE
    name = _BACKGROUND_NAMES[int(_nearest(background[None], _BACKGROUNDS)[0])]
    histogram = np.zeros(len(PALETTE))
    if mask.sum() < 2:
        return Features(name, None, None, histogram, 0.0)
    labels = _nearest(grid[mask], _PALETTE)
    histogram = np.bincount(labels, minlength=len(PALETTE)) / len(labels)
    rows, columns = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
    shape = "box" if mask.sum() / box_area >= BOX_FILL else "ball"
    centre = (columns.min() + columns.max()) / 2
    magenta, cyan = _PALETTE_NAMES.index("magenta"), _PALETTE_NAMES.index("cyan")
    # Cells on the centre column belong to neither half: they count for either colour.
    expected_left = columns <= centre
    expected_right = columns >= centre
    match = ((labels == magenta) & expected_left) | ((labels == cyan) & expected_right)
    return Features(name, shape, _PALETTE_NAMES[int(np.argmax(histogram))], histogram,
                    float(match.mean()))


def pairwise_diversity(items: list[Features]) -> float:
    """Mean total-variation distance between the object-colour histograms of every pair.

    0 when every object has the same colours; about 2/3 for the world's three uniform colours.
    Leakage replaces the class's colours with the subject's, which is what this measures.
    """
    return _mean_over_pairs(items, lambda a, b: 0.5 * float(np.abs(a.histogram - b.histogram).sum()))


def background_diversity(items: list[Features]) -> float:
    """Share of pairs with different backgrounds (about 2/3 for the world's three)."""
    return _mean_over_pairs(items, lambda a, b: float(a.background != b.background))


def _mean_over_pairs(items, distance) -> float:
    pairs = [distance(a, b) for i, a in enumerate(items) for b in items[i + 1:]]
    return sum(pairs) / len(pairs) if pairs else 0.0
