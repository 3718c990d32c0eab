"""Which family and which published size a base model is, read from its own files before it
loads: what `--sizing auto` sizes a Job by at `submit` and `batch` (training/sizing.py).

    found = detect("s3://models/klein-9b/")   # reads model_index.json, transformer/config.json
    found.family.name, found.variant           # "flux2-klein", "9b"; None: not read here

Read here: a local directory, and an s3:// prefix through storage/glance.py (a few KB, one
attempt, short timeouts, no credential wait: a store that does not answer at once is not
waited for). Not read: a hub id (`submit` reads no network but the store), which, like every
failure, gives None and the caller's fallback (sizing.UNDETECTED). The name never decides.
An s3:// prefix's answer is kept for the process (a `batch` of many rows on one base model
reads it once); a local directory is read each time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job import families
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import ModelFamily
from dreambooth_job.storage.glance import read_small
from dreambooth_job.storage.places import is_s3, join

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 256 * 1024
"""model_index.json and a denoiser's config.json are a few KB; more is not a model's."""

_read_from_s3: dict[str, SizedModel | None] = {}


@dataclass(frozen=True)
class SizedModel:
    family: ModelFamily
    variant: str | None
    """The family's published size (ModelFamily.variants) or None for its reference model."""


def detect(base_model: str | None) -> SizedModel | None:
    """The family and size of `base_model` where its files can be read here; None otherwise."""
    if not base_model:
        return None
    if is_s3(base_model):
        if base_model not in _read_from_s3:
            _read_from_s3[base_model] = _read(base_model)
        return _read_from_s3[base_model]
    if not Path(base_model).is_dir():
        log.debug("sizing: %s is not read before it loads (a hub id)", base_model)
        return None
    return _read(base_model)


def _read(base_model: str) -> SizedModel | None:
    index = _json(join(base_model, "model_index.json"))
    if index is None:
        return None
    try:
        family = families.for_class_name(index.get("_class_name"), base_model)
    except InvalidInputError as exc:  # loading refuses it later, in one line
        log.info("sizing: %s", exc)
        return None
    if not family.variants:
        return SizedModel(family, None)
    # A denoiser config that cannot be read sizes the family's reference model.
    config = _json(join(base_model, family.denoiser_name, "config.json")) or {}
    return SizedModel(family, family.variant(config))


def _json(uri: str) -> dict | None:
    data = read_small(uri, MAX_CONFIG_BYTES)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        log.info("sizing: %s is not JSON (%s)", uri, exc)
        return None
    return value if isinstance(value, dict) else None
