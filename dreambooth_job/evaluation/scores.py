"""The arithmetic of the paper's metrics, on embeddings (rows of a 2-D tensor) or distances.

Kept free of any model so that it can be checked on hand-computed examples:

    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(mean_cross_similarity(a, torch.tensor([[1.0, 0.0]])), 6)   # (1 + 0) / 2
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-12


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (a zero row stays zero rather than becoming NaN)."""
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) for every pair: shape (len(a), len(b))."""
    return normalized(a) @ normalized(b).T


def mean_cross_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs (a_i, b_j): DINO, CLIP-I, PRES (generated x real)."""
    return float(cosine_matrix(a, b).mean())


def mean_paired_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of cos(a_i, b_i): CLIP-T, each image against the text of its own prompt."""
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((normalized(a) * normalized(b)).sum(dim=-1).mean())


def mean_within_similarity(x: torch.Tensor) -> float:
    """Mean cosine similarity over the distinct pairs i < j of one set (self-pairs excluded)."""
    n = len(x)
    if n < 2:
        raise ValueError("a within-set similarity needs at least two items")
    sims = cosine_matrix(x, x)
    i, j = torch.triu_indices(n, n, offset=1)
    return float(sims[i, j].mean())


def mean_group_distance(groups: Sequence[torch.Tensor],
                        distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """DIV: the mean over groups (prompts) of the mean `distance` between a group's distinct pairs.

    `distance(x, y)` takes two equally long batches and returns one distance per row.
    """
    means = []
    for group in groups:
        n = len(group)
        if n < 2:
            raise ValueError("a diversity score needs at least two images per prompt")
        i, j = torch.triu_indices(n, n, offset=1)
        means.append(distance(group[i], group[j]).double().mean())
    return float(torch.stack(means).mean())


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x_i, y_i): the embedding distance of the DIV fallback."""
    return 1.0 - (normalized(x) * normalized(y)).sum(dim=-1)
