"""--optimizer (training/setup.py make_optimizer): Prodigy and Adafactor runs finish and resume
bitwise on the CPU (Prodigy's step-size estimate d travels in the checkpoint), --use-8bit-adam is
--optimizer adamw-8bit, --learning-rate auto is 1.0 for Prodigy, and the memory estimate prices each
optimizer's state as the real optimizers keep it."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")

from dreambooth_job.bench.architectures import build_pipeline  # noqa: E402
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config  # noqa: E402
from dreambooth_job.config.run_identity import differing_model_fields  # noqa: E402
from dreambooth_job.config.train_config import TrainConfig  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.training import memory_estimate, setup, sizing  # noqa: E402
from dreambooth_job.training.trainer import Trainer  # noqa: E402

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3, warmup=0,
                    prior_preservation=True, seed=0)
REQUIRED = {"instance_data": "d", "class_noun": "dog", "output": "o"}


# One torch thread for the in-process training (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def sd_pipeline():
    return build_pipeline("tiny", seed=0)


def trainer(**overrides) -> Trainer:
    config = bench_config(SETTINGS, Variant("opt", {"train_mode": "lora", "lora_rank": 4, **overrides}))
    trainer = Trainer(config, copy.deepcopy(sd_pipeline()), instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog")
    trainer.setup()
    return trainer


def weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.models.trainable]


@pytest.mark.parametrize("optimizer, learning_rate", [("prodigy", None), ("adafactor", 1e-3)])
def test_a_run_finishes_and_resumes_bitwise(optimizer, learning_rate, tmp_path):
    uninterrupted = trainer(optimizer=optimizer, learning_rate=learning_rate)
    start = weights(uninterrupted)
    uninterrupted.train(2)
    uninterrupted.save_state(tmp_path / "state")
    uninterrupted.train(1)
    resumed = trainer(optimizer=optimizer, learning_rate=learning_rate)
    resumed.load_state(tmp_path / "state", 2)
    resumed.train(1)
    end = weights(uninterrupted)
    assert all(torch.equal(a, b) for a, b in zip(end, weights(resumed)))
    assert not all(torch.equal(a, b) for a, b in zip(start, end))
    assert all(w.isfinite().all() for w in end)
    group, resumed_group = uninterrupted.optimizer.param_groups[0], resumed.optimizer.param_groups[0]
    if optimizer == "prodigy":
        assert group["lr"] == 1.0  # --learning-rate auto, Prodigy's convention
        # The step-size estimate moved, and the checkpoint carried it.
        assert group["d_numerator"] != 0 and group["d_hat"] > 0
        estimate = ("d", "d_hat", "d_numerator", "d_denom", "d_max", "k")
        assert [resumed_group[k] for k in estimate] == [group[k] for k in estimate]
    else:
        assert group["relative_step"] is False and group["lr"] == 1e-3


def test_use_8bit_adam_is_optimizer_adamw_8bit():
    alias = TrainConfig(**REQUIRED, use_8bit_adam=True)
    named = TrainConfig(**REQUIRED, optimizer="adamw-8bit")
    assert alias.resolved_optimizer == named.resolved_optimizer == "adamw-8bit"
    assert differing_model_fields(alias.to_dict(), named) == []
    assert differing_model_fields(TrainConfig(**REQUIRED).to_dict(), named) == ["optimizer", "use_8bit_adam"]
    with pytest.raises(InvalidInputError, match="--use-8bit-adam means --optimizer adamw-8bit"):
        TrainConfig(**REQUIRED, use_8bit_adam=True, optimizer="prodigy")


def test_learning_rate_auto_is_one_for_prodigy_only():
    assert TrainConfig(**REQUIRED, optimizer="prodigy").resolved_learning_rate == 1.0
    assert TrainConfig(**REQUIRED, optimizer="prodigy", learning_rate=0.5).resolved_learning_rate == 0.5
    assert TrainConfig(**REQUIRED, optimizer="adafactor").resolved_learning_rate == 5e-6
    assert TrainConfig(**REQUIRED, train_mode="lora").resolved_learning_rate == 1e-4


@pytest.mark.parametrize("bad", [{"optimizer": "sgd"}, {"ema_decay": 1.0}, {"ema_decay": -0.1}])
def test_bad_values_are_refused_naming_the_option(bad):
    with pytest.raises(InvalidInputError, match="--" + next(iter(bad)).replace("_", "-")):
        TrainConfig(**REQUIRED, **bad)


def optimizer_state_bytes(name: str) -> tuple[int, int]:
    """The bytes of `name`'s state after one step on a 64x64 layer, and its parameter count."""
    layer = torch.nn.Linear(64, 64)
    optimizer = setup.make_optimizer(name, list(layer.parameters()), 1e-3, 0.0)
    layer(torch.randn(2, 64)).square().sum().backward()
    optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(v.numel() * v.element_size() for v in state if v.dim() > 0), sum(
        p.numel() for p in layer.parameters())


@pytest.mark.parametrize("name", ["adamw", "prodigy", "adafactor"])
def test_the_estimates_price_each_optimizers_real_state(name):
    state, params = optimizer_state_bytes(name)
    assert state == pytest.approx(params * memory_estimate.CHECKPOINT_STATE_BYTES[name], abs=2 * 64 * 4 * 2)
    assert memory_estimate.checkpoint_bytes(params, name) == params * 4 + params * (
        memory_estimate.CHECKPOINT_STATE_BYTES[name])


def test_the_default_estimate_is_unchanged_and_ema_adds_an_fp32_copy():
    assert memory_estimate.training_state_bytes(1000, "adamw") == 12000
    assert memory_estimate.training_state_bytes(1000, "adamw-8bit") == 6000
    assert memory_estimate.training_state_bytes(1000, "adamw", ema=True) == 16000
    assert memory_estimate.checkpoint_bytes(1000, "prodigy", ema=True) == 1000 * (4 + 16 + 4)
    assert (memory_estimate.training_state_bytes(1000, "adafactor")
            < memory_estimate.training_state_bytes(1000, "adamw")
            < memory_estimate.training_state_bytes(1000, "prodigy"))


def test_a_checkpoint_with_prodigys_state_and_the_average_needs_a_longer_grace():
    trained = 10**10  # more than any profile is sized for: the checkpoint decides the budget
    adamw = sizing.job_budget(None, "sdxl", "full", trained, "adamw")
    assert sizing.job_budget(None, "sdxl", "full", trained, "adafactor") < adamw
    assert adamw < sizing.job_budget(None, "sdxl", "full", trained, "adamw", ema=True) \
        < sizing.job_budget(None, "sdxl", "full", trained, "prodigy", ema=True)
