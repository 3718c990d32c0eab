"""What bench (and any caller) drives the Trainer through, with no reach into its internals: a
number of steps per `train` call, gradient zeroing as a parameter, one Trainer after another."""

from __future__ import annotations

import copy
import functools

import torch

from dreambooth_job.bench.architectures import build_pipeline
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
from dreambooth_job.events import JobObserver
from dreambooth_job.training.trainer import Trainer

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3, warmup=0,
                    prior_preservation=True, seed=0)


class Steps(JobObserver):
    def __init__(self):
        self.logged: list[tuple[int, float]] = []

    def train_progress(self, progress) -> None:
        self.logged.append((progress.step, progress.loss))


@functools.cache
def tiny_pipeline():
    return build_pipeline("tiny", seed=0)


def trainer(observer=None, set_grads_to_none=True, **overrides) -> Trainer:
    config = bench_config(SETTINGS, Variant("test", {"log_every": 1, "learning_rate": 1e-3, **overrides}))
    pipeline = copy.deepcopy(tiny_pipeline())
    trainer = Trainer(config, pipeline, instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog", observer=observer,
                      set_grads_to_none=set_grads_to_none)
    trainer.setup()
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    unet = trainer.accelerator.unwrap_model(trainer.models.denoiser)
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_steps_run_in_parts_train_exactly_like_one_run():
    whole_losses, parts_losses = Steps(), Steps()
    whole = trainer(whole_losses)
    whole.train()
    parts = trainer(parts_losses)
    steps_seen = []
    parts.train(2, on_step_end=steps_seen.append)
    result = parts.train(1, on_step_end=steps_seen.append)
    assert steps_seen == [1, 2, 3] and result.steps_done == 3
    assert parts_losses.logged == whole_losses.logged
    assert all(torch.equal(a, b) for a, b in zip(weights(whole).values(), weights(parts).values()))


def test_steps_may_run_past_max_train_steps():
    run = trainer()
    assert run.train(SETTINGS.steps + 2).steps_done == SETTINGS.steps + 2


def test_gradients_are_zeroed_in_place_when_asked():
    in_place = trainer(set_grads_to_none=False)
    in_place.train(1)
    assert all(p.grad is not None and not p.grad.any() for p in in_place.models.trainable)
    to_none = trainer()
    to_none.train(1)
    assert all(p.grad is None for p in to_none.models.trainable)


def test_trainers_of_different_precisions_run_one_after_another():
    trainer(mixed_precision="no").train(1)
    later = trainer(mixed_precision="bf16")
    assert later.runtime.precision == "bf16"
    assert later.train(1).mixed_precision == "bf16"


def test_the_checkpointing_estimate_reads_the_family_and_grows_with_the_batch():
    """`gradient_checkpointing: auto` decides on CUDA from `setup.step_bytes`: the family's
    activation levels for the trainer's denoiser, plus the trained parameters' state."""
    from dreambooth_job.training import memory_estimate, setup

    t = trainer()
    denoiser = t.accelerator.unwrap_model(t.models.denoiser)
    one, two = (setup.step_bytes(t.config, t.pipeline, t.family, t.models, images, True)
                for images in (1, 2))
    trained = sum(p.numel() for p in t.models.trainable)
    assert one == memory_estimate.training_bytes(t.config, t.family, denoiser.config,
                                                 t.pipeline.vae_scale_factor, trained, 1, True)
    assert two > one > memory_estimate.training_state_bytes(trained, "adamw")
