"""The licence a base model declares in its card (README.md front matter), as result.json
records it: the hub's `license`, or `license_name` for `license: other`; None otherwise."""

from __future__ import annotations

import pytest

from dreambooth_job.training.base_models import BaseModel
from dreambooth_job.training.model_card import MAX_CARD_BYTES, declared_license


def local_model(tmp_path, card: str | bytes | None) -> BaseModel:
    (tmp_path / "model_index.json").write_text("{}")
    if card is not None:
        data = card if isinstance(card, bytes) else card.encode()
        (tmp_path / "README.md").write_bytes(data)
    return BaseModel(source=str(tmp_path), local_path=str(tmp_path), fingerprint="f")


@pytest.mark.parametrize(("card", "expected"), [
    ("---\nlicense: apache-2.0\nlibrary_name: diffusers\n---\n# FLUX.2 [klein]\n", "apache-2.0"),
    ("---\nlanguage: [en]\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n"
     "license_link: LICENSE.md\n---\n", "flux-1-dev-non-commercial-license"),
    ("\ufeff---\nlicense: creativeml-openrail-m\n---\n", "creativeml-openrail-m"),
    ("---\nlicense: other\n---\n", "other"),  # named nowhere else: the hub's word is all there is
    ("# A model\n\nlicense: apache-2.0\n", None),  # prose, not front matter
    ("---\nlicense: apache-2.0\n", None),  # front matter never closed
    ("---\nlicense: [apache-2.0, mit]\n---\n", None),
    ("---\nlicense: {{broken\n---\n", None),
    ("---\n- a list\n---\n", None),
    (f"---\nlicense: {'x' * 500}\n---\n", None),
    (b"---\nlicense: apache-2.0\n---\n" + b"\xff" * (2 * MAX_CARD_BYTES), "apache-2.0"),
    (None, None),
])
def test_the_cards_front_matter_names_the_licence(tmp_path, card, expected):
    assert declared_license(local_model(tmp_path, card), str(tmp_path / "cache")) == expected


def test_a_hub_model_whose_card_cannot_be_fetched_has_none(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = BaseModel(source="black-forest-labs/FLUX.2-klein-base-4B",
                    local_path="black-forest-labs/FLUX.2-klein-base-4B", fingerprint="f", hub=True)
    assert declared_license(hub, str(tmp_path / "cache")) is None
