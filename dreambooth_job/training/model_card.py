"""The licence a base model declares, for result.json (`base_model.license`).

A diffusers model declares it in its model card, the README.md at the top of the repository,
in the YAML front matter the hub reads (https://huggingface.co/docs/hub/model-cards#model-card-metadata):

    ---
    license: apache-2.0                       # FLUX.2 [klein] base 4B: an SPDX-like hub id
    ---
    license: other                            # FLUX.1 [dev]: a licence of its own, named here
    license_name: flux-1-dev-non-commercial-license
    license_link: LICENSE.md

model_index.json and the components' configs carry no licence. A local directory or a
downloaded s3:// prefix holds the README.md it was copied with (the model cache copies every
file); for a hub id diffusers' `from_pretrained` fetches only the components, so the card is
fetched on its own (a few kB). A model that declares nothing, or whose card cannot be read,
has no licence: None, never a failed job.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from dreambooth_job.training.base_models import BaseModel

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# The front matter is at the top: a card's prose (often long) is never read.
MAX_CARD_BYTES = 64 * 1024
# A licence name is a short identifier; a longer value is not one (and is not recorded).
MAX_NAME_CHARS = 128


def declared_license(model: BaseModel, cache_dir: str) -> str | None:
    """The licence name `model`'s card declares: `license_name` where `license` is `other`,
    else `license`; None when it declares none or the card cannot be read."""
    card = _hub_card(model.source, cache_dir) if model.hub else Path(model.local_path) / CARD_FILE
    if card is None or not card.is_file():
        return None
    with card.open("rb") as file:
        text = file.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
    return license_of(front_matter(text))


def front_matter(text: str) -> dict:
    """The YAML mapping between a card's opening `---` line and the next; {} when there is
    none or it is not a mapping."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    if end is None:
        return {}
    try:
        metadata = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def license_of(metadata: dict) -> str | None:
    """The hub's rule: `license: other` names its licence in `license_name`."""
    name = metadata.get("license")
    if name == "other" and isinstance(metadata.get("license_name"), str):
        name = metadata["license_name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        return None
    return name.strip()


def _hub_card(repo_id: str, cache_dir: str) -> Path | None:
    """A hub model's card, into the same cache as its weights; None when the hub has none for
    it or cannot be reached (offline, gated, gone)."""
    from huggingface_hub import hf_hub_download  # deferred: only hub ids need it

    try:
        return Path(hf_hub_download(repo_id, CARD_FILE, cache_dir=str(Path(cache_dir, "hub"))))
    except (OSError, ValueError) as exc:  # the hub's errors are OSErrors; a bad id a ValueError
        log.info("no model card for %s (%s): its licence is not recorded", repo_id,
                 type(exc).__name__)
        return None
