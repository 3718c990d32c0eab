"""What each training step trains on, drawn from (seed, step) alone: which images, flipped or not,
and where a random crop falls. A resumed run draws exactly what an uninterrupted one drew."""

from __future__ import annotations

import numpy as np
import torch

from dreambooth_job.training.subject_photos import square_crop_at, to_tensor


def step_generator(seed: int, step: int) -> torch.Generator:
    """The source of every random number drawn at `step` (data order aside)."""
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def pick(count: int, name: str, step: int, batch: int, seed: int, random_flip: bool,
         generator: torch.Generator, indices: list[int] | None = None) -> tuple[list[int], list[bool]]:
    """Which of the `count` images of set `name` step `step` trains on (each epoch is a seeded
    permutation, instance and class images apart; `indices` when the caller chose them, as
    aspect buckets do), and which of them are flipped."""
    indices = picked_indices(count, name, step, batch, seed) if indices is None else indices
    flips = [bool(f) for f in torch.rand(batch, generator=generator) < 0.5] \
        if random_flip else [False] * batch
    return indices, flips


def picked_indices(count: int, name: str, step: int, batch: int, seed: int) -> list[int]:
    """`pick`'s images, from (seed, step) alone: the prompts of a batch follow its images."""
    indices = []
    for slot in range(step * batch, (step + 1) * batch):
        epoch, position = divmod(slot, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(
            seed * 7919 + epoch + (0 if name == "instance" else 104729)))
        indices.append(int(order[position]))
    return indices


def caption_dropped(seed: int, step: int, batch: int, probability: float) -> list[bool]:
    """Which images of step `step`'s batch train on the instance prompt instead of their caption
    (--caption-dropout). Its own generator, from (seed, step): the step's generator draws the same
    numbers with and without captions, and a resumed run drops what an uninterrupted one did."""
    if probability <= 0:
        return [False] * batch
    generator = torch.Generator().manual_seed(seed * 15_485_863 + step)
    return [bool(d) for d in torch.rand(batch, generator=generator) < probability]


def random_crops(images, resolution: int, generator: torch.Generator
                 ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """A random square crop of each image (PIL) at `resolution`, as tensors, with each crop's
    (top, left): size-conditioned families take it."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    taken = [square_crop_at(image, resolution, False, rng) for image in images]
    return [to_tensor(crop) for crop, _ in taken], [top_left for _, top_left in taken]


def center_crops(images, resolution: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The centre square crop of each image (PIL) at `resolution`, stacked, and each (top, left)."""
    taken = [square_crop_at(image, resolution, True) for image in images]
    return torch.stack([to_tensor(crop) for crop, _ in taken]), [top_left for _, top_left in taken]
