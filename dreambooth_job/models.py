"""Base models: where they come from (hub id, local directory, s3:// prefix), how they load, and the
tiny random Stable-Diffusion-shaped pipeline used by tests, `demo` and `bench`.

Loading goes through diffusers' `from_pretrained`; saving through `save_pretrained` with
safetensors, so a fine-tuned model is a plain diffusers pipeline directory.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job import model_cache, storage
from dreambooth_job.exit_codes import InvalidInputError, RetryableError

log = logging.getLogger(__name__)

DOWNLOAD_MARKER = model_cache.MARKER
CLIP_MAX_LENGTH = 77
# CLIP's BPE keeps the first 48,894 merges: 256 bytes x 2 (with/without </w>) + merges + 2 specials
# add up to Stable Diffusion's 49,408-token vocabulary.
CLIP_NUM_MERGES = 49408 - 512 - 2


@dataclass(frozen=True)
class BaseModel:
    """A base model resolved to a local diffusers directory (or a hub id diffusers can load)."""

    source: str
    """What the user gave: hub id, local path or s3:// prefix."""
    local_path: str
    """What `from_pretrained` receives."""
    fingerprint: str
    """Stable identity of the weights, for cache keys and resume checks."""


def resolve_base_model(source: str, cache_dir: str) -> BaseModel:
    """Make `source` loadable locally: S3 prefixes are downloaded once into the cache, and a
    cached copy is reused only when it verifies against a fresh listing (model_cache.py)."""
    if storage.is_s3(source):
        files = storage.list_files(source)
        if not any(f.relative_path == "model_index.json" for f in files):
            raise InvalidInputError(
                f"--base-model {source} holds no diffusers pipeline (no model_index.json)")
        fingerprint = _digest([(f.relative_path, f.size, f.etag) for f in files])
        local = model_cache.cached_copy(source, files, Path(cache_dir, "models", fingerprint[:16]))
        return BaseModel(source, str(local), fingerprint)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise InvalidInputError(
                f"--base-model {source} holds no diffusers pipeline (no model_index.json)")
        return BaseModel(source, str(path), _local_fingerprint(path))
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise InvalidInputError(f"--base-model {source} is neither a directory, an s3:// prefix nor a hub id")
    return BaseModel(source, source, _digest([("hub", source)]))


def _local_fingerprint(path: Path) -> str:
    """Hash of the configs and the weight files' names and sizes: cheap, and changes with the model."""
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != DOWNLOAD_MARKER):
        rel = file.relative_to(path).as_posix()
        if file.suffix in (".json", ".txt"):
            entries.append((rel, hashlib.sha256(file.read_bytes()).hexdigest()))
        else:
            entries.append((rel, file.stat().st_size))
    return _digest(entries)


def _digest(entries) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, default=str).encode()).hexdigest()


def load_pipeline(model: BaseModel, cache_dir: str):
    """Load the base pipeline of its family (families.detect: model_index.json's `_class_name`;
    an unsupported one is invalid input) on the CPU, in fp32 whatever dtype it was saved in:
    training keeps fp32 master weights, and sampling on CUDA runs under autocast (sampling.py)."""
    from dreambooth_job import families

    try:
        family = families.detect(model.local_path, cache_dir, source=model.source)
        return family.load_pipeline(model.local_path, cache_dir)
    except OSError as exc:
        if model.local_path == model.source and not storage.is_s3(model.source):
            # A hub id we could not fetch: the hub may be down or unreachable from this network.
            raise RetryableError(f"cannot load --base-model {model.source} from the hub: "
                                 f"{str(exc).splitlines()[0]}") from None
        raise InvalidInputError(f"cannot load --base-model {model.source}: "
                                f"{str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------
# Offline building blocks: the real CLIP tokenizer and a tiny random SD-shaped pipeline.

def clip_tokenizer():
    """Stable Diffusion's CLIP tokenizer, built from the BPE merges open_clip_torch ships."""
    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            "the CLIP vocabulary needs open_clip_torch (pip install --no-deps open_clip_torch)")
    bpe = Path(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:CLIP_NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        Path(vocab_file).write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
        Path(merges_file).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=CLIP_MAX_LENGTH)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in the tokenizer's order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


TINY_SIZES = {
    # name: (UNet block channels, VAE block channels, text width, text layers)
    "tiny": ((32, 64), (32, 64), 32, 2),
}


def build_tiny_pipeline(output_dir: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon"):
    """Save a tiny random SD-1.x-shaped pipeline (real tokenizer) in diffusers format; returns it.

    Its VAE downsamples 2x (two blocks), so 64 px images train on 32x32 latents.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_channels, vae_channels, text_width, text_layers = TINY_SIZES["tiny"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=unet_channels, cross_attention_dim=text_width, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), norm_num_groups=8, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=text_width, intermediate_size=text_width * 4,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return pipeline
