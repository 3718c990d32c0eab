"""LPIPS loads the two upstream weight layouts and behaves like a distance."""

from __future__ import annotations

import pytest
import torch

from dreambooth_job.evaluation.encoders import Unavailable
from dreambooth_job.evaluation.lpips import LPIPS


def test_lpips_is_zero_for_identical_images_and_symmetric(tiny_lpips_dir, tmp_path):
    model = LPIPS.load(str(tiny_lpips_dir), str(tmp_path))
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max() < 1e-6
    assert torch.allclose(model(x, y), model(y, x))
    assert (model(x, y) > 0).all()


def test_missing_lpips_weights_are_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="lpips_alex.pth|alexnet.pth"):
        LPIPS.load(str(tmp_path), str(tmp_path))
    with pytest.raises(Unavailable, match="no --lpips-model"):
        LPIPS.load(None, str(tmp_path))
