"""Aspect-ratio buckets (--aspect-buckets): the sizes photos train at, which bucket each photo
takes, its crop, and batches drawn within one bucket.

The buckets (`bucket_sizes`) are every (width, height) whose sides are multiples of the family's
latent granularity `g` (`ModelFamily.latent_granularity`), whose aspect ratio is between 1:4 and
4:1, and whose area is within `area_tolerance` = g / resolution of resolution² (rounding the
height to the nearest multiple of g misses the area by at most g/2 rows of the width, and a side
is at least resolution / 2). A photo takes the bucket nearest its aspect ratio in log scale
(`nearest_bucket`): for a photo between 1:4 and 4:1 the ratio of its aspect to its bucket's is
within a factor exp(`aspect_error_bound`) = exp(1.25 g / resolution) (17 % for SD at 512, 4 % for
SDXL at 1024, 2 % for FLUX at 1024); wider photos take the 4:1 bucket. The photo is resized to
cover the bucket and cropped to it, at the centre (or at random with --random-crop).

Batches (`bucket_batch`) never mix buckets: each epoch every bucket's photos are permuted and cut
into batches (the last one filled from the start of the permutation), and the epoch's batches are
shuffled; all of it drawn from (seed, epoch), so a step's batch is a function of (seed, step) and
a resumed run trains on what an uninterrupted one did.
"""

from __future__ import annotations

import math

from PIL import Image

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.training.subject_photos import to_tensor

MAX_ASPECT = 4.0
"""The widest bucket is 4:1, the tallest 1:4 (SDXL's training buckets span the same range)."""


def area_tolerance(resolution: int, granularity: int) -> float:
    """How far (relative) a bucket's area may be from resolution²."""
    return granularity / resolution


def aspect_error_bound(resolution: int, granularity: int) -> float:
    """The largest |log(photo aspect / bucket aspect)| of a photo between 1:4 and 4:1."""
    return 1.25 * granularity / resolution


def check_resolution(resolution: int, granularity: int) -> None:
    """Exit 2 unless the square bucket is the resolution itself."""
    if resolution % granularity:
        raise InvalidInputError(f"--aspect-buckets needs --resolution a multiple of {granularity} px "
                                f"for this base model (its latent granularity), not {resolution}")


def bucket_sizes(resolution: int, granularity: int) -> list[tuple[int, int]]:
    """Every bucket (width, height), from the tallest to the widest; the square is one when the
    resolution is a multiple of the granularity (load_model checks it)."""
    area, g = resolution * resolution, granularity
    tolerance = area_tolerance(resolution, g)
    sizes = set()
    narrowest = math.ceil(resolution / math.sqrt(MAX_ASPECT) / g) * g
    for width in range(max(g, narrowest), math.floor(resolution * math.sqrt(MAX_ASPECT)) + 1, g):
        height = max(g, round(area / width / g) * g)
        if 1 / MAX_ASPECT <= width / height <= MAX_ASPECT and abs(width * height / area - 1) <= tolerance:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes, key=lambda size: (size[0] / size[1], size[0]))


def priced_resolution(config, family, pipeline, resolution: int) -> int:
    """The square side whose area the memory estimates price: the resolution, or with
    --aspect-buckets the largest bucket's area (up to g / resolution more pixels)."""
    if not config.aspect_buckets:
        return resolution
    sizes = bucket_sizes(resolution, family.latent_granularity(pipeline))
    return math.ceil(math.sqrt(max(width * height for width, height in sizes)))


def aspect_error(size: tuple[int, int], bucket: tuple[int, int]) -> float:
    """|log| of the ratio of a (width, height)'s aspect ratio to the bucket's."""
    return abs(math.log(size[0] / size[1]) - math.log(bucket[0] / bucket[1]))


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the (width, height)'s; the first on a tie."""
    return min(buckets, key=lambda bucket: aspect_error(size, bucket))


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled (aspect kept) so that it covers `target` (width, height)."""
    scale = max(target[0] / size[0], target[1] / size[1])
    return max(target[0], round(size[0] * scale)), max(target[1], round(size[1] * scale))


def bucket_crop_at(image: Image.Image, target: tuple[int, int], center: bool,
                   rng=None) -> tuple[Image.Image, tuple[int, int]]:
    """The image resized to cover `target` (width, height) and cropped to it, centred or at a
    random offset; returns the crop and its (top, left) in the resized image."""
    image = image.resize(cover_size(image.size, target), Image.BICUBIC)
    dx, dy = image.width - target[0], image.height - target[1]
    if center or rng is None:
        left, top = dx // 2, dy // 2
    else:
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return image.crop((left, top, left + target[0], top + target[1])), (top, left)


def random_bucket_crops(images, targets, generator):
    """A random crop of each image (PIL) at its target (width, height), and each (top, left)."""
    import numpy as np  # deferred: numpy is heavy
    import torch  # deferred: torch is heavy

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    taken = [bucket_crop_at(image, target, False, rng) for image, target in zip(images, targets)]
    return [to_tensor(crop) for crop, _ in taken], [top_left for _, top_left in taken]


def epoch_batches(buckets: list[tuple[int, int]], batch: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """The batches of image indices of one epoch, given each image's bucket: every bucket's
    images permuted and cut into batches of `batch` (wrapping around), the batches shuffled."""
    import torch  # deferred: torch is heavy
    groups: dict[tuple[int, int], list[int]] = {}
    for index, bucket in enumerate(buckets):
        groups.setdefault(bucket, []).append(index)
    batches = []
    for number, members in enumerate(groups[b] for b in sorted(groups)):
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(
            seed * 7919 + epoch * 104_723 + number))
        permuted = [members[int(i)] for i in order]
        for start in range(0, len(permuted), batch):
            batches.append([permuted[(start + k) % len(permuted)] for k in range(batch)])
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(
        seed * 15_485_867 + epoch))
    return [batches[int(i)] for i in shuffle]


def bucket_batch(buckets: list[tuple[int, int]], batch: int, seed: int, step: int) -> list[int]:
    """Step `step`'s images, all of one bucket, from (seed, step) alone."""
    per_epoch = sum(math.ceil(n / batch) for n in _counts(buckets))
    epoch, position = divmod(step, per_epoch)
    return epoch_batches(buckets, batch, seed, epoch)[position]


def _counts(buckets: list[tuple[int, int]]) -> list[int]:
    return [buckets.count(b) for b in set(buckets)]
