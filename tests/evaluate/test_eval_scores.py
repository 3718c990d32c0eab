"""The metric arithmetic on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dreambooth_job.evaluation import scores


def test_cross_similarity_matches_a_hand_computed_example():
    generated = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    real = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cos: (g1,r1)=1, (g1,r2)=1/sqrt2, (g2,r1)=0, (g2,r2)=1/sqrt2 -> mean (1 + sqrt2) / 4
    assert scores.mean_cross_similarity(generated, real) == pytest.approx((1 + 2 ** 0.5) / 4)


def test_paired_similarity_compares_rows_with_their_own_partner_only():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert scores.mean_paired_similarity(images, texts) == pytest.approx((1 + 0 - 1) / 3)
    with pytest.raises(ValueError):
        scores.mean_paired_similarity(images, texts[:2])


def test_within_similarity_skips_self_pairs():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # distinct pairs: (1,2)=0, (1,3)=1, (2,3)=0
    assert scores.mean_within_similarity(x) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        scores.mean_within_similarity(x[:1])


def test_group_distance_averages_pairs_then_groups():
    def l1(a, b):
        return (a - b).abs().sum(dim=-1)

    groups = [torch.tensor([[0.0], [1.0], [3.0]]),  # pairs 1, 3, 2 -> 2
              torch.tensor([[0.0], [4.0]])]         # pair 4 -> 4
    assert scores.mean_group_distance(groups, l1) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        scores.mean_group_distance([torch.zeros(1, 2)], l1)


def test_cosine_distance_and_zero_rows():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    assert scores.cosine_distance(x, y).tolist() == pytest.approx([2.0, 1.0])
    assert not torch.isnan(scores.cosine_matrix(x, x)).any()


# The properties below need an embedding with meaning; random-weight ViTs have none. This one is a
# centred 16x16 grey thumbnail made left-right symmetric, so a mirror image embeds identically and
# unrelated noise lands near orthogonal.
def symmetric_thumbnail(image: Image.Image) -> torch.Tensor:
    a = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float64)
    a = a - a.mean()
    return torch.from_numpy((a + a[:, ::-1]).ravel())


def embed(images):
    return torch.stack([symmetric_thumbnail(i) for i in images])


def structured(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(base).resize((64, 64), Image.BICUBIC).convert("RGB")


def noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_identical_images_score_one():
    images = [structured(1), structured(2)]
    assert scores.mean_paired_similarity(embed(images), embed(images)) == pytest.approx(1.0)


def test_mirror_scores_high_and_unrelated_noise_low():
    subject = [structured(i) for i in range(4)]
    mirrored = [ImageOps.mirror(i) for i in subject]
    unrelated = [noise(100 + i) for i in range(4)]
    mirror_score = scores.mean_paired_similarity(embed(mirrored), embed(subject))
    noise_score = scores.mean_paired_similarity(embed(unrelated), embed(subject))
    assert mirror_score > 0.99
    assert abs(noise_score) < 0.3
