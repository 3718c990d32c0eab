"""The training speed switches change the speed, not the training: a few steps with each switch give
the losses and weights of the default path, within floating-point rounding (CPU, fixed seed)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from dreambooth_job.bench.architectures import build_pipeline
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
from dreambooth_job.events import JobObserver
from dreambooth_job.training.trainer import Trainer

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3, warmup=0,
                    prior_preservation=True, seed=0)
LOSS_RTOL = 1e-5
# AdamW's first steps move each weight by about +-lr whatever the gradient's size, so rounding noise
# in a near-zero gradient can flip a single weight's step: compare whole updates, not single weights.
UPDATE_RTOL = 1e-3


class Losses(JobObserver):
    def __init__(self):
        self.values: list[float] = []

    def train_progress(self, progress) -> None:
        self.values.append(progress.loss)


def train(**overrides) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of every step and the final UNet weights of a short run with `overrides`."""
    config = bench_config(SETTINGS, Variant("test", {"log_every": 1, "learning_rate": 1e-3, **overrides}))
    pipeline = copy.deepcopy(tiny_pipeline())
    losses = Losses()
    trainer = Trainer(config, pipeline, instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog", observer=losses)
    trainer.setup()
    trainer.train()
    unet = trainer.accelerator.unwrap_model(trainer.models.denoiser, keep_torch_compile=False)
    return losses.values, {k: v.detach().clone().contiguous() for k, v in unet.state_dict().items()}


@functools.cache
def tiny_pipeline():
    return build_pipeline("tiny", seed=0)


@pytest.fixture(scope="module")
def initial():
    return {k: v.clone() for k, v in tiny_pipeline().unet.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    return train()


def assert_same_training(initial, reference, other):
    (ref_losses, ref_weights), (losses, weights) = reference, other
    assert len(losses) == len(ref_losses) == SETTINGS.steps
    assert losses == pytest.approx(ref_losses, rel=LOSS_RTOL)
    moved = sum(((ref_weights[k] - initial[k]).double() ** 2).sum() for k in initial).sqrt()
    apart = sum(((weights[k] - ref_weights[k]).double() ** 2).sum() for k in initial).sqrt()
    assert moved > 0
    assert apart / moved <= UPDATE_RTOL, f"updates differ by {apart / moved:.2e} of their size"


def test_cached_latents_and_embeddings_train_like_encoding_every_step(initial, reference):
    assert_same_training(initial, reference, train(cache_latents=False))


@pytest.mark.parametrize("impl", ["loop", "foreach"])
def test_adamw_kernels_agree_with_the_fused_default(initial, reference, impl):
    assert_same_training(initial, reference, train(adam_impl=impl))


@pytest.mark.parametrize("options", [{"channels_last": True}, {"attention_backend": "math"},
                                     {"attention_backend": "eager"}], ids=str)
def test_layout_and_attention_switches_agree(initial, reference, options):
    assert_same_training(initial, reference, train(**options))
