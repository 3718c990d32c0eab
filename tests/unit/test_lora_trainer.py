"""The Trainer in LoRA mode (families/lora_mode.py, training/state.py): only adapters train, the
objective and caches are full mode's, samples and the saved model are base + adapters, and a
checkpoint holds the adapters and their optimizer state only."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")

from dreambooth_job.bench.architectures import build_pipeline  # noqa: E402
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402
from dreambooth_job.training.trainer import Trainer  # noqa: E402

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3, warmup=0,
                    prior_preservation=True, seed=0)


# One torch thread for the in-process training (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def tiny_pipeline():
    return build_pipeline("tiny", seed=0)


def trainer(**overrides) -> Trainer:
    config = bench_config(SETTINGS, Variant("test", {"train_mode": "lora", "lora_rank": 4,
                                                     "learning_rate": 1e-2, **overrides}))
    pipeline = copy.deepcopy(tiny_pipeline())
    trainer = Trainer(config, pipeline, instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog")
    trainer.setup()
    return trainer


def adapters(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if ".lora_" in k}


def base_weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if ".lora_" not in k}


@torch.no_grad()
def unet_output(pipe):
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 4, 4, generator=generator)
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    return pipe.unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


def test_only_the_adapters_train_and_the_base_stays_as_loaded():
    t = trainer(train_text_encoder=True)
    optimized = {id(p) for group in t.optimizer.param_groups for p in group["params"]}
    for module in (t.models.denoiser, t.models.text_encoders["text_encoder"]):
        trained = {name for name, p in module.named_parameters() if id(p) in optimized}
        assert trained == {name for name, p in module.named_parameters() if ".lora_" in name}
        assert all(p.dtype == torch.float32 for p in lora_adapters.lora_parameters(module))
    # With the text encoder's adapters training, prompt embeddings cannot be cached.
    assert t.inputs.cache.embeddings is None
    before_unet = base_weights(t.models.denoiser)
    before_text = base_weights(t.models.text_encoders["text_encoder"])
    adapters_before = adapters(t.models.text_encoders["text_encoder"])
    result = t.train()
    assert result.train_mode == "lora" and result.learning_rate == 1e-2
    assert result.trainable_parameters == sum(
        p.numel() for group in t.optimizer.param_groups for p in group["params"])
    after_unet = base_weights(t.models.denoiser)
    assert all(torch.equal(a, b) for a, b in zip(before_unet.values(), after_unet.values()))
    text_encoder = t.models.text_encoders["text_encoder"]
    assert all(torch.equal(a, b) for a, b in
               zip(before_text.values(), base_weights(text_encoder).values()))
    assert any(not torch.equal(a, b)
               for a, b in zip(adapters_before.values(), adapters(text_encoder).values()))


def test_unet_only_lora_caches_embeddings_like_full_mode():
    t = trainer()
    assert t.inputs.cache.embeddings is not None and t.inputs.cache.latents is not None
    assert not lora_adapters.has_lora(t.models.text_encoders["text_encoder"])


def test_the_adapters_start_from_the_seed():
    assert all(torch.equal(a, b) for a, b in zip(adapters(trainer().models.denoiser).values(),
                                                   adapters(trainer().models.denoiser).values()))
    other = adapters(trainer(seed=1).models.denoiser)
    same = adapters(trainer().models.denoiser)
    assert any(not torch.equal(a, b) for a, b in zip(same.values(), other.values()))


def test_samples_and_the_saved_model_are_base_plus_adapters(tmp_path):
    from diffusers import StableDiffusionPipeline

    t = trainer()
    t.train()
    pipe = t.inference_pipeline()
    assert not pipe.unet.training, "sampling in eval mode (no adapter dropout)"
    adapted = unet_output(pipe)
    assert not torch.allclose(adapted, unet_output(tiny_pipeline()), atol=1e-4)
    t.mode.save(t.family, t.inference_pipeline(), tmp_path / "model")  # --lora-merge's merge
    assert lora_adapters.has_lora(t.models.denoiser), \
        "saving merges copies: the live pipeline keeps its adapters"
    saved = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(unet_output(saved), adapted, rtol=1e-4, atol=1e-5)
    t.train(1)  # training goes on after sampling, in train mode again
    assert t.models.denoiser.training


def test_a_checkpoint_holds_the_adapters_and_their_optimizer_state_only(tmp_path):
    from safetensors.torch import load_file

    t = trainer(train_text_encoder=True)
    t.train(2)
    t.save_state(tmp_path / "state")
    unet_file, text_file = load_file(tmp_path / "state" / "model.safetensors"), \
        load_file(tmp_path / "state" / "model_1.safetensors")
    assert unet_file.keys() == adapters(t.models.denoiser).keys()
    assert text_file.keys() == adapters(t.models.text_encoders["text_encoder"]).keys()
    moments = [s["exp_avg"].numel() for s in t.optimizer.state_dict()["state"].values()]
    assert sum(moments) == sum(p.numel() for p in t.models.trainable)

    resumed = trainer(train_text_encoder=True)
    resumed.load_state(tmp_path / "state", 2)
    for a, b in ((t.models.denoiser, resumed.models.denoiser),
                 (t.models.text_encoders["text_encoder"], resumed.models.text_encoders["text_encoder"])):
        assert all(torch.equal(x, y) for x, y in zip(adapters(a).values(), adapters(b).values()))
    t.train(1)
    resumed.train(1)
    ends = adapters(t.models.denoiser), adapters(resumed.models.denoiser)
    assert all(torch.equal(x, y) for x, y in zip(ends[0].values(), ends[1].values()))


def test_a_checkpoint_of_other_adapters_is_refused(tmp_path):
    trainer().save_state(tmp_path / "state")
    other = trainer(lora_target_modules=["to_q"])
    with pytest.raises(InvalidInputError, match="model.safetensors holds other trainable parameters"):
        other.load_state(tmp_path / "state", 0)
