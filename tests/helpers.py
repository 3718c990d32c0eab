"""Small builders shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path


def make_photo(path: Path, seed: int, size=(320, 288), mode="RGB", fmt=None) -> Path:
    """A small synthetic photo: a coloured blob on a gradient, different per seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w * 255, y / h * 255, np.full_like(x, rng.integers(0, 255))], -1)
    cx, cy, r = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4), min(w, h) // 4
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    image = Image.fromarray(base.astype("uint8"), "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def upload_photos(local_dir: Path, uri: str) -> str:
    from dreambooth_job import storage

    storage.upload_dir(local_dir, uri)
    return uri
