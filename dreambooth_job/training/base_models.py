"""Base models: where they come from (hub id, local directory, s3:// prefix), how they load, and the
tiny random Stable-Diffusion-shaped pipeline used by tests, `demo` and `bench`.

Loading goes through diffusers' `from_pretrained`; saving through `save_pretrained` with
safetensors, so a fine-tuned model is a plain diffusers pipeline directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job import families
from dreambooth_job.config.choices import AUTO
from dreambooth_job.exit_codes import InvalidInputError, JobError, RetryableError
from dreambooth_job.storage import model_cache
from dreambooth_job.storage import places as storage

log = logging.getLogger(__name__)

DOWNLOAD_MARKER = model_cache.MARKER


@dataclass(frozen=True)
class BaseModel:
    """A base model resolved to a local diffusers directory (or a hub id diffusers can load)."""

    source: str
    """What the user gave: hub id, local path or s3:// prefix."""
    local_path: str
    """What `from_pretrained` receives."""
    fingerprint: str
    """Stable identity of the weights, for cache keys and resume checks."""
    hub: bool = False
    """A hub id (not a directory or s3:// prefix): `from_pretrained` fetches it over the network."""


def resolve_base_model(source: str, cache_dir: str) -> BaseModel:
    """Make `source` loadable locally: S3 prefixes are downloaded once into the cache, and a
    cached copy is reused only when it verifies against a fresh listing (storage/model_cache.py)."""
    return _resolve(source, cache_dir, "--base-model", "model_index.json", "diffusers pipeline")


def resolve_vae(source: str, cache_dir: str) -> BaseModel:
    """--vae resolved like the base model: a diffusers AutoencoderKL directory (its config.json
    at the top), an s3:// prefix holding one (cached and verified alike) or a hub id."""
    return _resolve(source, cache_dir, "--vae", "config.json", "diffusers VAE")


def _resolve(source: str, cache_dir: str, flag: str, marker: str, what: str) -> BaseModel:
    if storage.is_s3(source):
        files = storage.list_files(source)
        if not any(f.relative_path == marker for f in files):
            raise InvalidInputError(f"{flag} {source} holds no {what} (no {marker})")
        fingerprint = _digest([(f.relative_path, f.size, f.etag) for f in files])
        local = model_cache.cached_copy(source, files, Path(cache_dir, "models", fingerprint[:16]))
        return BaseModel(source, str(local), fingerprint)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise InvalidInputError(f"{flag} {source} holds no {what} (no {marker})")
        return BaseModel(source, str(path), _local_fingerprint(path))
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise InvalidInputError(f"{flag} {source} is neither a directory, an s3:// prefix nor a hub id")
    return BaseModel(source, source, _digest([("hub", source)]), hub=True)


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
    training keeps fp32 master weights, and sampling on CUDA runs under autocast (generation/sampling.py)."""
    try:
        family = families.detect(model.local_path, cache_dir, source=model.source)
        return family.load_pipeline(model.local_path, cache_dir)
    except Exception as exc:  # noqa: BLE001 - _load_error says which are worth a retry
        raise _load_error("--base-model", model, exc) from None


def training_resolution(requested: int | None, pipeline) -> int:
    """--resolution as a run uses it: the number asked for, or for auto (None) the base model's
    native resolution (its family's). The one place auto is resolved: a job resolves it once,
    when the model loads (phases/load_model.py), and every later phase reads that; `evaluate` and
    `generate` resolve it for the model they load."""
    return requested or families.for_pipeline(pipeline).native_resolution(pipeline)


def sampling_guidance(requested: float | None, pipeline) -> float:
    """--guidance-scale as sampling uses it: the number asked for, or for auto (None) the base
    model's family's (`ModelFamily.default_guidance_scale`). Resolved like the resolution: once
    when a job's model loads, and by `evaluate` and `generate` for the model they load."""
    if requested is not None:
        return requested
    return families.for_pipeline(pipeline).default_guidance_scale


def weights_precision(requested: str, pipeline) -> str:
    """--save-precision as the weight files are written: fp16, bf16 or fp32, auto being the
    family's (`ModelFamily.default_save_precision`)."""
    if requested != AUTO:
        return requested
    return families.for_pipeline(pipeline).default_save_precision


def _load_error(flag: str, model: BaseModel, exc: Exception) -> Exception:
    """What a model that failed to load ends the job with: a hub id's OSError (diffusers' own for a
    network failure) is worth a retry, the hub may be down; a local directory or a downloaded
    s3:// prefix loads the same files again, so whatever it raised is invalid input naming `flag`.
    A job error (an unknown family) and running out of memory are not the model's fault: as is."""
    import torch  # deferred: torch is heavy

    if isinstance(exc, JobError | MemoryError | torch.OutOfMemoryError):
        return exc
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    if model.hub:
        if isinstance(exc, OSError):
            return RetryableError(f"cannot load {flag} {model.source} from the hub: {reason}")
        return exc
    return InvalidInputError(f"cannot load {flag} {model.source}: {reason}")


def with_vae(pipeline, base: BaseModel, vae_source: str | None, cache_dir: str):
    """`pipeline` with --vae's AutoencoderKL (fp32, like the base) in place of its own, and the
    base's identity with the VAE's folded in (class-image cache keys, result.json); unchanged
    without --vae, so existing cache keys stay valid."""
    import torch  # deferred: torch is heavy
    from diffusers import AutoencoderKL  # deferred: diffusers is heavy

    if not vae_source:
        return pipeline, base
    vae_model = resolve_vae(vae_source, cache_dir)
    try:
        vae = AutoencoderKL.from_pretrained(vae_model.local_path, torch_dtype=torch.float32,
                                            cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - as in load_pipeline
        raise _load_error("--vae", vae_model, exc) from None
    def shape(config):  # latent channels and downscaling: what the UNet and the pipeline rely on
        return config.latent_channels, len(config.block_out_channels)

    if shape(vae.config) != shape(pipeline.vae.config):
        raise InvalidInputError(
            f"--vae {vae_source} does not fit the base model's UNet (latent channels, levels "
            f"{shape(vae.config)} against {shape(pipeline.vae.config)})")
    pipeline.register_modules(vae=vae)  # saved with the model: the output samples as it trained
    log.info("VAE from --vae %s", vae_source)
    return pipeline, dataclasses.replace(
        base, fingerprint=_digest([base.fingerprint, ("vae", vae_model.fingerprint)]))
