"""Subject photos: validate what the user uploaded, and turn images into training tensors.

Validation runs before any heavy work so that a bad upload fails in seconds, naming each bad file.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from dreambooth_job.config import IMAGE_SUFFIXES, TrainConfig
from dreambooth_job.exit_codes import InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rejected:
    file: str
    reason: str


@dataclass
class SubjectPhotos:
    images: list[Image.Image]
    """Decoded, EXIF-oriented RGB photos, in file-name order."""
    used: list[str]
    rejected: list[Rejected]


def load_photo(path: Path, min_side: int, max_pixels: int) -> Image.Image:
    """Decode one photo to upright RGB, or raise ValueError saying why it is unusable."""
    with warnings.catch_warnings():
        # Pillow warns, then raises, on huge images; we check the size ourselves before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise ValueError(f"{width}x{height} has more than {max_pixels} pixels")
                probe.load()
                image = ImageOps.exif_transpose(probe)
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    if min(image.size) < min_side:
        raise ValueError(f"{image.size[0]}x{image.size[1]} is smaller than {min_side} px on a side")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB whatever the mode: alpha is composited on white, 16-bit and CMYK are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def load_subject_photos(directory: Path, config: TrainConfig,
                        rejected: Iterable[Rejected] = ()) -> SubjectPhotos:
    """Every usable photo under `directory`; fails when fewer than --min-images remain.
    `rejected`: photos already refused (e.g. keys that were not downloaded), reported alike."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    images, used, rejected = [], [], list(rejected)
    for path in files:
        name = path.relative_to(directory).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append(Rejected(name, f"not an image file type ({', '.join(IMAGE_SUFFIXES)})"))
            continue
        try:
            images.append(load_photo(path, config.min_image_side, config.max_image_pixels))
            used.append(name)
        except ValueError as exc:
            rejected.append(Rejected(name, str(exc)))
    for r in rejected:
        log.warning("skipping photo %s: %s", r.file, r.reason)
    if len(images) < config.min_images:
        named = "; ".join(f"{r.file}: {r.reason}" for r in rejected[:3])
        detail = f" ({len(rejected)} rejected: {named})" if rejected else ""
        raise InvalidInputError(
            f"--instance-data {config.instance_data} has {len(images)} valid photo(s), "
            f"need at least {config.min_images}{detail}")
    return SubjectPhotos(images, used, rejected)


def square_crop(image: Image.Image, resolution: int, center: bool, rng=None) -> Image.Image:
    """Resize the shorter side to `resolution` and crop a square, centred or at a random offset."""
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    dx, dy = image.width - resolution, image.height - resolution
    if center or rng is None:
        left, top = dx // 2, dy // 2
    else:
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image):
    """A PIL image as a CHW float tensor in [-1, 1], the VAE's input range."""
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
