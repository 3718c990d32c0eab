"""LPIPS, the perceptual distance behind the paper's DIV (Zhang et al., "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric", 2018), AlexNet variant, written here from
the paper's definition because the `lpips` package needs torchvision.

The distance between two images: run both through AlexNet's five conv stages, scale each
stage's activations to unit length along the channels at every position, square the difference,
weigh the channels with the learned non-negative linear layer, average over positions, and sum over
the stages. 0 for identical images, larger for more different ones.

Weights (not shipped, no hub home): a directory or s3:// prefix holding
- `alexnet.pth`: torchvision's ImageNet AlexNet state dict (only its `features.*` are used),
- `lpips_alex.pth`: the lpips package's v0.1 linear weights for AlexNet (`weights/v0.1/alex.pth`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dreambooth_job.evaluation.encoders import Unavailable, resolve_source

BACKBONE_FILE = "alexnet.pth"
LINEAR_FILE = "lpips_alex.pth"
CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)
"""Indices of the ReLUs in `features` whose outputs are compared (torchvision's layer numbering)."""
# LPIPS rescales [-1, 1] images towards ImageNet statistics before AlexNet.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        self.linear = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.source: str | None = None

    @classmethod
    def load(cls, source: str | None, cache_dir: str) -> LPIPS:
        path = Path(resolve_source(source, cache_dir, "--lpips-model"))
        if not path.is_dir():
            raise Unavailable(f"--lpips-model {source} must be a directory or s3:// prefix "
                              f"holding {BACKBONE_FILE} and {LINEAR_FILE}")
        try:
            backbone = torch.load(path / BACKBONE_FILE, map_location="cpu", weights_only=True)
            linear = torch.load(path / LINEAR_FILE, map_location="cpu", weights_only=True)
            model = cls()
            features = {k.removeprefix("features."): v for k, v in backbone.items()
                        if k.startswith("features.")}
            model.features.load_state_dict(features)
            model.linear.load_state_dict(
                {f"{i}.weight": linear[f"lin{i}.model.1.weight"] for i in range(len(CHANNELS))})
        except (OSError, KeyError, RuntimeError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise Unavailable(f"cannot load --lpips-model {source}: "
                              f"{type(exc).__name__}: {first_line}") from None
        model.source = source
        return model.eval().requires_grad_(False)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One distance per pair of rows of `x` and `y`: (N, 3, H, W) images in [-1, 1]."""
        total = torch.zeros(len(x), device=x.device)
        for linear, fx, fy in zip(self.linear, self._stages(x), self._stages(y)):
            diff = (_unit_channels(fx) - _unit_channels(fy)) ** 2
            total = total + linear(diff).mean(dim=(1, 2, 3))
        return total


def _unit_channels(h: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
