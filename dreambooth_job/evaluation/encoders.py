"""The evaluator models: where they come from and how they turn images and texts into embeddings.

Sources are hub ids, local directories or s3:// prefixes, like the base model; S3 prefixes are
downloaded once into `<cache-dir>/evaluators/`. Nothing loads at import time. A model that cannot
be loaded raises `Unavailable` with the reason, which the evaluator records instead of failing.

Preprocessing: photos are centre-cropped to a square first (generated images are square, and the
training crop is central too), then each model's own saved image processor resizes and normalizes
them (transformers' PIL implementation, so torchvision is not needed). A model saved without a
processor gets its family's standard one at the model's input size: DINO uses ImageNet's mean
and standard deviation, CLIP OpenAI's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from PIL import Image

from dreambooth_job.storage import model_cache
from dreambooth_job.storage import places as storage

log = logging.getLogger(__name__)

DOWNLOAD_MARKER = model_cache.MARKER
EMBED_BATCH = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Unavailable(Exception):
    """An evaluator model could not be loaded; the message says why."""


def resolve_source(source: str | None, cache_dir: str, option: str) -> str:
    """A local directory (S3 downloaded) or a hub id that `from_pretrained` can load."""
    if not source:
        raise Unavailable(f"no {option} given")
    if storage.is_s3(source):
        files = storage.list_files(source)
        if not files:
            raise Unavailable(f"{option} {source} holds no files")
        digest = hashlib.sha256(json.dumps(
            [(f.relative_path, f.size, f.etag) for f in files]).encode()).hexdigest()
        return str(model_cache.cached_copy(source, files, Path(cache_dir, "evaluators", digest[:16])))
    path = Path(source).expanduser()
    if path.exists():
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise Unavailable(
            f"{option} {source} does not exist (not a directory, s3:// prefix or hub id)")
    return source


def _load(option: str, loader):
    """Run a from_pretrained call, turning any failure into Unavailable with a one-line reason."""
    try:
        return loader()
    # Broad on purpose: a missing or broken evaluator model must not fail the job.
    except Exception as exc:  # noqa: BLE001
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise Unavailable(f"cannot load {option}: {type(exc).__name__}: {first_line}") from None


def center_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side))


def _image_processor(family: str, path: str, cache_dir: str, defaults: dict):
    import transformers  # deferred: transformers is heavy

    # The PIL implementation where transformers has one: it needs no torchvision.
    cls = getattr(transformers, f"{family}ImageProcessorPil", None) or getattr(
        transformers, f"{family}ImageProcessor")
    try:
        return cls.from_pretrained(path, cache_dir=cache_dir)
    except (OSError, ValueError):
        return cls(**defaults)


class _Encoder:
    """Shared plumbing: device placement and batched image embedding."""

    source: str

    def __init__(self, model, processor):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor

    def to(self, device) -> None:
        self.model.to(device)

    def _pixels(self, images: list[Image.Image]):
        batch = self.processor(images=[center_square(i) for i in images], return_tensors="pt")
        return batch["pixel_values"].to(self.model.device, self.model.dtype)

    def embed_images(self, images: list[Image.Image]):
        """One embedding per image, float32 on the CPU."""
        import torch  # deferred: torch is heavy

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), EMBED_BATCH):
                pixels = self._pixels(images[start:start + EMBED_BATCH])
                chunks.append(self._image_features(pixels).float().cpu())
        return torch.cat(chunks)

    def _image_features(self, pixels):
        raise NotImplementedError


class DinoEncoder(_Encoder):
    """DINO ViT (the paper: ViT-S/16): the CLS token of the last layer, after its layer norm."""

    @classmethod
    def load(cls, source: str | None, cache_dir: str) -> DinoEncoder:
        path = resolve_source(source, cache_dir, "--dino-model")

        def loader():
            from transformers import ViTModel  # deferred: transformers is heavy

            model = ViTModel.from_pretrained(path, add_pooling_layer=False, cache_dir=cache_dir)
            size = model.config.image_size
            processor = _image_processor("ViT", path, cache_dir, {
                "size": {"height": size, "width": size},
                "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD})
            return cls(model, processor)

        encoder = _load("--dino-model", loader)
        encoder.source = source
        return encoder

    def _image_features(self, pixels):
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


class ClipEncoder(_Encoder):
    """CLIP: projected image and text embeddings, the space in which the two are compared."""

    def __init__(self, model, processor, tokenizer):
        super().__init__(model, processor)
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, source: str | None, cache_dir: str) -> ClipEncoder:
        path = resolve_source(source, cache_dir, "--clip-model")

        def loader():
            from transformers import AutoTokenizer, CLIPModel  # deferred: transformers is heavy

            model = CLIPModel.from_pretrained(path, cache_dir=cache_dir)
            size = model.config.vision_config.image_size
            processor = _image_processor("CLIP", path, cache_dir, {
                "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}})
            tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=cache_dir)
            return cls(model, processor, tokenizer)

        encoder = _load("--clip-model", loader)
        encoder.source = source
        return encoder

    def _image_features(self, pixels):
        # Vision tower then projection, spelled out: get_image_features' return type differs
        # between transformers 4 and 5.
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def embed_texts(self, texts: list[str]):
        """One embedding per text, float32 on the CPU."""
        import torch  # deferred: torch is heavy

        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                           attention_mask=tokens["attention_mask"]).pooler_output
            return self.model.text_projection(pooled).float().cpu()
