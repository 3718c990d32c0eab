"""A LoKr run's LyCORIS file read back (outputs/lora_readers.py, what `generate` draws such a run
with): on a fresh base it computes what the adapted model in the trainer's process computed, for
SD and SDXL, factored and whole factors, the UNet's and the text encoders' adapters; a file that
does not fit the base model is exit 2 naming it."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from dreambooth_job import families  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.outputs import lora_readers, lora_writers  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402

TARGETS = lora_adapters.DEFAULT_UNET_TARGETS + lora_adapters.UNET_CONV_TARGETS  # linear and conv


def _load(path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)


def _adapted(model, rank: int, text_encoders: bool):
    """The base with LoKr adapters as training adds them, given seeded non-zero factors."""
    torch.manual_seed(0)
    pipe = _load(model)
    encoders = [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2") if hasattr(pipe, n)]
    lora_adapters.add_lora(pipe.unet, encoders[0] if text_encoders else None, rank=rank, alpha=8,
                           target_modules=TARGETS, variant="lokr")
    if text_encoders and len(encoders) == 2:
        lora_adapters.add_lora(None, encoders[1], rank=rank, alpha=8, variant="lokr")
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for module in [pipe.unet, *encoders]:
            for name, param in module.named_parameters():
                if "lokr_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return pipe


@torch.no_grad()
def _outputs(pipe) -> list[torch.Tensor]:
    """The UNet's output on seeded inputs, and each text encoder's hidden states of a prompt."""
    generator = torch.Generator().manual_seed(7)
    family = families.for_pipeline(pipe)
    ids = family.tokenize(pipe, "a sks dog")
    embeddings = family.encode_prompt(family.text_encoders(pipe), ids, "cpu")
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    unet = pipe.unet
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": embeddings.pooled,
                                       "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]]).float()}
    sample = unet(latents, torch.tensor([500]), encoder_hidden_states=context, **kwargs).sample
    return [sample, embeddings.hidden_states]


@pytest.mark.parametrize("rank", [2, 16], ids=["low-rank-w2", "whole-w2"])
@pytest.mark.parametrize("model, text_encoders", [("tiny_model", False), ("tiny_model", True),
                                                  ("tiny_sdxl_model", True)])
def test_the_lycoris_file_applied_is_the_adapted_model(model, text_encoders, rank, request, tmp_path):
    model = request.getfixturevalue(model)
    pipe = _adapted(model, rank, text_encoders)
    family = families.for_pipeline(pipe)
    path = lora_writers.save_lora_kohya(tmp_path / "dog.safetensors", family,
                                        family.lora_format.modules(pipe), dtype="fp32",
                                        metadata={"identifier": "sks"})
    assert lora_readers.is_lokr_file(path)
    fresh = _load(model)
    base = _outputs(fresh)
    lora_readers.apply_lokr_file(fresh, path)
    adapted, applied = _outputs(pipe), _outputs(fresh)
    for expected, got in zip(adapted, applied):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(applied[0], base[0], atol=1e-3), "the UNet's adapters changed it"
    assert torch.equal(applied[1], base[1]) != text_encoders, "the text encoders' adapters too"
    adapted_layers = {n for n, p in pipe.unet.named_parameters() if "lokr_" in n}
    assert adapted_layers == {n for n, p in fresh.unet.named_parameters() if "lokr_" in n}


def test_a_file_that_does_not_fit_is_exit_2_naming_it(tiny_model, tmp_path):
    pipe = _adapted(tiny_model, 2, False)
    family = families.for_pipeline(pipe)
    path = lora_writers.save_lora_kohya(tmp_path / "dog.safetensors", family,
                                        family.lora_format.modules(pipe), dtype="fp32")
    state = safetensors_torch.load_file(path)
    header = safetensors_torch.safe_open(path, "pt").metadata()
    cases = {
        "stranger": ({**state, "lora_unet_no_such_layer.lokr_w1": torch.zeros(2, 2)}, header,
                     "adapts 1 layer(s) the base model does not have, e.g. lora_unet_no_such_layer"),
        "no-rank": (state, {k: v for k, v in header.items() if k != "lora_rank"},
                    "its header states no lora_rank and lora_alpha"),
        "other-rank": (state, {**header, "lora_rank": "3"}, "do not fit rank 3 adapters"),
        "dora": ({k.replace("lokr_w2_a", "dora_scale"): v for k, v in state.items()}, header,
                 "not the LoKr factors of a --lora-variant lokr run"),
    }
    for name, (tensors, metadata, message) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        safetensors_torch.save_file(tensors, bad, metadata=metadata)
        with pytest.raises(InvalidInputError, match=f"^{name}.safetensors: .*{re.escape(message)}"):
            lora_readers.apply_lokr_file(_load(tiny_model), bad)
