"""The toy world: 32 px pictures of one flat-coloured object on a flat background, with captions
built from the same few words ("a red ball on a green background").

The world is small on purpose: a base model that learns it on 2 CPU cores must exist before any
DreamBooth effect can be measured, and every quantity the metrics need (background colour, object
colour, shape) can be read back from a picture with a few lines of numpy.

    from dreambooth_job.toyworld import world
    image, caption = world.sample(numpy.random.default_rng(0))
    photos = world.subject_photos()       # the subject: a ball the base model never saw
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
CELLS = 16
"""Pictures are 16x16 pixel art shown at 32 px: each cell is a 2x2 block, which the toy VAE's
2x latent (latent.py) stores exactly."""
SUPERSAMPLE = 4
"""Shapes are drawn at 4x and downsampled, so edges are anti-aliased like a photo's."""

SHAPES = ("ball", "box")
COLOURS = {"red": (215, 40, 40), "yellow": (235, 200, 35), "blue": (40, 70, 215)}
BACKGROUNDS = {"white": (235, 235, 235), "green": (50, 150, 60), "black": (25, 25, 25)}
SUBJECT_COLOURS = {"magenta": (215, 40, 200), "cyan": (40, 210, 215)}
"""The subject's two halves: colours no caption of the world names and no base image contains."""

OBJECT_SIZE = (8, 12)
"""Diameter / side in cells: large objects, so that shape and colour are easy to learn and read."""
JITTER = 12
"""Per-channel colour noise, so that 'red' is a cluster and not one value."""

# Caption dropout: "a ball" must mean "a ball of any colour on any background" (the class prior
# DreamBooth preserves), and empty captions train the unconditional branch of classifier-free guidance.
DROP_COLOUR, DROP_BACKGROUND, EMPTY_CAPTION = 0.3, 0.3, 0.1


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: int
    x: int
    y: int
    """Top-left corner of the object's bounding box, in cells."""


def caption(shape: str, colour: str | None = None, background: str | None = None) -> str:
    words = ["a"] + ([colour] if colour else []) + [shape]
    if background:
        words += ["on", "a", background, "background"]
    return " ".join(words)


def random_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 background: str | None = None) -> Scene:
    size = int(rng.integers(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
    return Scene(shape or str(rng.choice(SHAPES)), colour or str(rng.choice(list(COLOURS))),
                 background or str(rng.choice(list(BACKGROUNDS))), size,
                 int(rng.integers(1, CELLS - size)), int(rng.integers(1, CELLS - size)))


def _jitter(rgb, rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-JITTER, JITTER + 1), 0, 255)) for c in rgb)


def draw(scene: Scene, rng: np.random.Generator, fill=None) -> Image.Image:
    """Render `scene`; `fill(draw, box, rng)` paints the object instead of a flat colour."""
    big = CELLS * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _jitter(BACKGROUNDS[scene.background], rng))
    pen = ImageDraw.Draw(image)
    box = [v * SUPERSAMPLE for v in (scene.x, scene.y, scene.x + scene.size, scene.y + scene.size)]
    if fill is not None:
        fill(image, box, rng)
    elif scene.shape == "ball":
        pen.ellipse(box, fill=_jitter(COLOURS[scene.colour], rng))
    else:
        pen.rectangle(box, fill=_jitter(COLOURS[scene.colour], rng))
    return image.resize((CELLS, CELLS), Image.LANCZOS).resize((SIZE, SIZE), Image.NEAREST)


def sample(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One training picture of the world and its caption (with caption dropout)."""
    scene = random_scene(rng)
    roll = rng.random(3)
    if roll[0] < EMPTY_CAPTION:
        text = ""
    else:
        text = caption(scene.shape, None if roll[1] < DROP_COLOUR else scene.colour,
                       None if roll[2] < DROP_BACKGROUND else scene.background)
    return draw(scene, rng), text


# ----------------------------------------------------------------------------------------------
# The subject: one ball, left half magenta and right half cyan.

def _subject_fill(image: Image.Image, box, rng: np.random.Generator) -> None:
    left, top, right, bottom = box
    middle = (left + right) // 2
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    halves = Image.new("L", image.size, 0)
    ImageDraw.Draw(halves).rectangle([left, top, middle, bottom], fill=255)
    magenta = Image.new("RGB", image.size, _jitter(SUBJECT_COLOURS["magenta"], rng))
    cyan = Image.new("RGB", image.size, _jitter(SUBJECT_COLOURS["cyan"], rng))
    image.paste(Image.composite(magenta, cyan, halves), mask=mask)


def subject_photo(rng: np.random.Generator, background: str) -> Image.Image:
    scene = random_scene(rng, shape="ball", background=background)
    return draw(scene, rng, fill=_subject_fill)


def subject_photos(count: int = 5, seed: int = 1234) -> list[Image.Image]:
    """The subject's photos: different positions and sizes, backgrounds taken in turn."""
    rng = np.random.default_rng(seed)
    backgrounds = list(BACKGROUNDS)
    return [subject_photo(rng, backgrounds[i % len(backgrounds)]) for i in range(count)]


def subject_captions(count: int = 5) -> list[str]:
    """Each subject photo's caption, in the world's words: the background it was taken on (the
    photos take the backgrounds in turn), the subject as the job's placeholders name it."""
    backgrounds = list(BACKGROUNDS)
    return [f"a {{identifier}} {{class_noun}} on a {backgrounds[i % len(backgrounds)]} background"
            for i in range(count)]


def dataset(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`count` pictures as a uint8 NHWC array, and their captions."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        image, text = sample(rng)
        images.append(np.asarray(image))
        captions.append(text)
    return np.stack(images), captions
