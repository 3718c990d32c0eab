"""Small builders shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# The families a test marked `@every_family` runs on: family name -> the session fixture of its
# tiny model (tests/conftest.py). Adding a family to every such test is one line here.
FAMILY_MODELS = {
    "sd": "tiny_model",
    "flux2-klein": "tiny_flux2_klein_model",
    "flux1": "tiny_flux1_model",
}
every_family = pytest.mark.parametrize("family_model", list(FAMILY_MODELS), indirect=True)
"""Run the test once per family of FAMILY_MODELS, with the `family_model` fixture set to it."""


@dataclass(frozen=True)
class FamilyModel:
    """A tiny base model of one family: `family` as result.json records it, saved at `path`."""

    family: str
    path: Path


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


def png_bomb(side: int) -> bytes:
    """A black 1-bit PNG of side x side pixels in a few KB (a decompression bomb), built row by row:
    saving one with Pillow would first hold every pixel in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (side + 7) // 8)  # the filter-type byte, then 8 pixels a byte
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def upload_photos(local_dir: Path, uri: str) -> str:
    from dreambooth_job.storage import places as storage

    storage.upload_dir(local_dir, uri)
    return uri


def job_args(common: list[str], bucket: str, photo_dir: Path, base_model: Path, cache_dir: Path):
    """`args(output, *extra)`: the job's arguments for a run of `common` on `photo_dir` (uploaded
    once to s3://bucket/photos/dog/) into s3://bucket/<output>/, sharing one class cache."""
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")

    def args(output: str, *extra: str) -> list[str]:
        return [*common, "--instance-data", photos, "--base-model", str(base_model),
                "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(cache_dir),
                "--output", f"s3://{bucket}/{output}/", *extra]

    return args


class JobProcess:
    """`dreambooth-job` as a child process whose log lines the test can wait for."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        import os
        import queue
        import subprocess
        import sys
        import threading

        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dreambooth_job.cli", *args], env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """Block until a line matching the regex `pattern` is printed; fail if the process ends."""
        import queue
        import re
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s") from None
            if line is None:
                raise AssertionError(f"process ended before printing {pattern!r}:\n{self.output[-3000:]}")
            if re.search(pattern, line):
                return line

    def wait(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def random_image(seed: int, size: int = 48):
    """A small random RGB PIL image (size x size+8), for the evaluation tests."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def perturb_lora_adapters(*modules) -> None:
    """lora_B starts at zero (the adapted model equals the base): give every adapter weight seeded
    non-zero values, so that files and outputs carry something to check."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
