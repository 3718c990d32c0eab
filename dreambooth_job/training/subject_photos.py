"""Subject photos: validate what the user uploaded, and turn images into training tensors.

Validation runs before any heavy work so that a bad upload fails in seconds, naming each bad file.
Every image the job decodes (photos, cached class images) goes through `open_image`: the header is
read first and an image with too many pixels is refused before a single pixel is decoded. Photos
are downscaled to the training resolution right after validation, so what is held in memory does
not depend on what was uploaded.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from dreambooth_job.config.choices import IMAGE_SUFFIXES
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.places import StoredFile
from dreambooth_job.training import captions

log = logging.getLogger(__name__)

# EXIF orientations that turn the image by 90 degrees: the upright size is the stored one swapped.
_QUARTER_TURNS = {5, 6, 7, 8}
# The decoders a photo may reach, whatever its name says: those of IMAGE_SUFFIXES (JPEG's also
# opens phones' multi-picture JPEGs), not every format Pillow knows (EPS, for one, runs Ghostscript).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")
# --resolution auto is known once the model is loaded (phases/load_model.py), after the photos are
# validated: they are decoded for validation at the largest native resolution of any family and
# decoded again at the resolved one, so a run's pixels do not depend on the order.
AUTO_DECODE_RESOLUTION = 1024
# Modes Pillow resizes with a proper filter; others ("1", "P", 16-bit) are converted first.
_RESIZABLE_MODES = {"L", "LA", "RGB", "RGBA", "CMYK"}


class UnusableImage(ValueError):
    """A file the job will not use as an image; the message says why."""


@dataclass(frozen=True)
class Rejected:
    file: str
    reason: str


@dataclass
class Photo:
    """One subject photo, ready for training, and what SDXL's size conditioning needs to know."""

    image: Image.Image
    """Upright RGB, downscaled so that its shorter side is the training resolution (never upscaled)."""
    original_size: tuple[int, int]
    """(width, height) of the upright photo as uploaded, before downscaling."""
    crop_top_left: tuple[int, int] | None = None
    """(top, left) of the last square crop taken by `crop`, in the downscaled image's pixels."""

    def crop(self, resolution: int, center: bool, rng=None) -> Image.Image:
        """A square training crop; records where it was taken (SDXL conditions on it)."""
        cropped, self.crop_top_left = square_crop_at(self.image, resolution, center, rng)
        return cropped


@dataclass
class SubjectPhotos:
    photos: list[Photo]
    """Usable photos, in file-name order."""
    used: list[str]
    rejected: list[Rejected]

    @property
    def images(self) -> list[Image.Image]:
        return [photo.image for photo in self.photos]


@dataclass
class PhotoListing:
    """What of a listing of --instance-data is downloaded: photos only, within the caps."""

    photos: list[StoredFile]
    skipped: list[Rejected]
    """Objects that are not photos by their name: named in the result, never downloaded."""
    captions: list[StoredFile] = field(default_factory=list)
    """Caption files of the photos (captions.py), within their byte bounds."""


def select_photos(files: Sequence[StoredFile], config: TrainConfig) -> PhotoListing:
    """Photos to download from a listing; exit 2 naming the cap when they are too many or too big."""
    photos = [f for f in files if f.relative_path.lower().endswith(IMAGE_SUFFIXES)]
    photo_paths = [f.relative_path for f in photos]
    skipped = []
    for f in files:
        if f not in photos and not captions.is_caption_file(f.relative_path, photo_paths):
            skipped.append(Rejected(storage.display_key(f.relative_path), f"not an image file type "
                                                     f"({', '.join(IMAGE_SUFFIXES)}); not downloaded"))
    if len(photos) > config.max_photos:
        raise InvalidInputError(f"--instance-data {config.instance_data} holds {len(photos)} photos, "
                                f"more than --max-photos {config.max_photos}")
    total = sum(f.size for f in photos)
    if total > config.max_photos_bytes:
        raise InvalidInputError(f"--instance-data {config.instance_data} holds {total} bytes of photos, "
                                f"more than --max-photos-bytes {config.max_photos_bytes}")
    return PhotoListing(photos, skipped, captions.caption_files(files, photos, config.max_photos))


def download_photos(config: TrainConfig, local_dir: Path, captions_dir: Path | None = None) -> PhotoListing:
    """Download the photos of --instance-data into `local_dir`: only image files, and only once
    the listing is within the caps (what was checked is exactly what is downloaded); their
    caption files (captions.py) into `captions_dir`."""
    listed = storage.list_files(config.instance_data)
    if not listed:
        raise InvalidInputError(f"--instance-data {config.instance_data} holds no files")
    selected = select_photos(listed, config)
    local_dir.mkdir(parents=True, exist_ok=True)

    def skip_unsafe(f: StoredFile, why: str) -> None:
        selected.skipped.append(Rejected(storage.display_key(f.relative_path),
                                         f"unsafe name, not downloaded: it {why}"))

    storage.download_listed(config.instance_data, selected.photos, local_dir, on_unsafe_key=skip_unsafe)
    if captions_dir is not None and selected.captions:
        captions_dir.mkdir(parents=True, exist_ok=True)
        storage.download_listed(config.instance_data, selected.captions, captions_dir,
                                on_unsafe_key=skip_unsafe)
    return selected


@contextmanager
def open_image(source, max_pixels: int, formats: Sequence[str] | None = None) -> Iterator[Image.Image]:
    """The image in `source` (a path or binary file), opened lazily: only its header has been read.

    More than `max_pixels` is refused before decoding (a few hundred KB of PNG can declare
    gigabytes of pixels). Any failure to decode, in the body too, raises UnusableImage.
    """
    with warnings.catch_warnings():
        # Pillow warns, then raises, on huge images; we check the size ourselves before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=formats) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnusableImage(f"{width}x{height} has more than {max_pixels} pixels")
                yield image
        except UnusableImage:
            raise
        except Image.DecompressionBombError as exc:  # over Pillow's own limit, from the header too
            raise UnusableImage(f"too many pixels to decode ({exc})") from None
        # Hostile bytes reach Pillow's decoders: whatever they raise means "not an image".
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise UnusableImage(f"not a decodable image ({type(exc).__name__}: {exc})") from None


def load_photo(path: Path, min_side: int, max_pixels: int, resolution: int) -> Photo:
    """Decode one photo to upright RGB with its shorter side at most `resolution`, or raise
    UnusableImage saying why it is unusable."""
    with open_image(path, max_pixels, PHOTO_FORMATS) as probe:
        width, height = probe.size
        if probe.getexif().get(0x0112) in _QUARTER_TURNS:
            width, height = height, width
        if min(width, height) < min_side:
            raise UnusableImage(f"{width}x{height} is smaller than {min_side} px on a side")
        # JPEG decodes at 1/2, 1/4 or 1/8 scale directly when that still covers the target size.
        probe.draft(None, cover_size(probe.size, resolution))
        probe.load()
        ImageOps.exif_transpose(probe, in_place=True)
        image = probe if probe.mode in _RESIZABLE_MODES else resizable(probe)
        # Shrunk before anything else holds it: memory no longer depends on the upload.
        return Photo(to_rgb(downscale(image, resolution)), (width, height))


def cover_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """`size` scaled (aspect kept) so that its shorter side is `resolution`."""
    scale = resolution / min(size)
    return max(resolution, round(size[0] * scale)), max(resolution, round(size[1] * scale))


def downscale(image: Image.Image, resolution: int) -> Image.Image:
    """The image with its shorter side shrunk to `resolution`; smaller images are left alone."""
    if min(image.size) <= resolution:
        return image
    return image.resize(cover_size(image.size, resolution), Image.BICUBIC, reducing_gap=3.0)


def resizable(image: Image.Image) -> Image.Image:
    """The image in the smallest mode that keeps its content and that Pillow resizes well."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB whatever the mode: alpha is composited on white, 16-bit and CMYK are converted."""
    if image.mode not in _RESIZABLE_MODES:
        image = resizable(image)
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def load_subject_photos(directory: Path, config: TrainConfig,
                        skipped: Sequence[Rejected] = ()) -> SubjectPhotos:
    """Every usable photo under `directory`; fails when fewer than --min-images remain.
    `skipped`: objects of --instance-data left out before the download, reported with the rest."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    photos, used, rejected = [], [], list(skipped)
    for path in files:
        name = path.relative_to(directory).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append(Rejected(name, f"not an image file type ({', '.join(IMAGE_SUFFIXES)})"))
            continue
        try:
            photos.append(load_photo(path, config.min_image_side, config.max_image_pixels,
                                     config.resolution or AUTO_DECODE_RESOLUTION))
            used.append(name)
        except UnusableImage as exc:
            rejected.append(Rejected(name, str(exc)))
    for r in rejected:
        log.warning("skipping photo %s: %s", r.file, r.reason)
    if len(photos) < config.min_images:
        named = "; ".join(f"{r.file}: {r.reason}" for r in rejected[:3])
        detail = f" ({len(rejected)} rejected: {named})" if rejected else ""
        raise InvalidInputError(
            f"--instance-data {config.instance_data} has {len(photos)} valid photo(s), "
            f"need at least {config.min_images}{detail}")
    return SubjectPhotos(photos, used, rejected)


def square_crop_at(image: Image.Image, resolution: int, center: bool,
                   rng=None) -> tuple[Image.Image, tuple[int, int]]:
    """Resize the shorter side to `resolution` and crop a square, centred or at a random offset;
    returns the crop and its (top, left) in the resized image."""
    image = image.resize(cover_size(image.size, resolution), Image.BICUBIC)
    dx, dy = image.width - resolution, image.height - resolution
    if center or rng is None:
        left, top = dx // 2, dy // 2
    else:
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


def square_crop(image: Image.Image, resolution: int, center: bool, rng=None) -> Image.Image:
    return square_crop_at(image, resolution, center, rng)[0]


def to_tensor(image: Image.Image):
    """A PIL image as a CHW float tensor in [-1, 1], the VAE's input range."""
    import numpy as np  # deferred: numpy is heavy
    import torch  # deferred: torch is heavy

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
