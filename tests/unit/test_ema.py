"""--ema-decay (training/ema.py): the average's math, that a resumed run's average and weights
equal an uninterrupted run's bitwise (tiny SD full fine-tuning, tiny FLUX.2 [klein] LoRA), and that
the published weights and samples are the average while training goes on from its own weights."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from dreambooth_job.bench.architectures import build_pipeline  # noqa: E402
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config  # noqa: E402
from dreambooth_job.devtools import tiny_models  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.outputs import weight_files  # noqa: E402
from dreambooth_job.training import ema  # noqa: E402
from dreambooth_job.training.trainer import Trainer  # noqa: E402

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=3, warmup=0,
                    prior_preservation=True, seed=0)


# One torch thread for the in-process training (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def sd_pipeline():
    return build_pipeline("tiny", seed=0)


@functools.cache
def klein_pipeline(directory):
    return tiny_models.build_tiny_flux2_klein_pipeline(directory)


def trainer(pipeline, **overrides) -> Trainer:
    config = bench_config(SETTINGS, Variant("ema", {"ema_decay": 0.9, "learning_rate": 1e-3,
                                                    **overrides}))
    trainer = Trainer(config, copy.deepcopy(pipeline), instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog")
    trainer.setup()
    return trainer


def tensors(t: Trainer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The training weights and the average, copied."""
    return ([p.detach().clone() for p in t.models.trainable],
            [a.clone() for a in t.average.averaged_tensors()])


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_average_of_a_fixed_sequence_equals_a_hand_computation():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    average = ema.WeightAverage([param], decay=0.8)
    sequence = [[2.0, 0.0, 1.0], [4.0, 2.0, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0], [3.0, -3.0, 0.0]]
    expected = None
    for t, values in enumerate(sequence, start=1):
        param.data = torch.tensor(values)
        average.update()
        # The decay of optimizer step t: 0 at the first (the average starts as the weights), then
        # min(D, (1 + s) / (10 + s)) with s = t - 1 (diffusers' EMAModel).
        decay = 0.0 if t == 1 else min(0.8, t / (9 + t))
        expected = [v if expected is None else decay * e + (1 - decay) * v
                    for e, v in zip(expected or values, values)]
        torch.testing.assert_close(average.averaged_tensors()[0], torch.tensor(expected))
    assert average.averaged_tensors()[0].dtype == torch.float32


@pytest.mark.parametrize("family", ["sd-full", "klein-lora"])
def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights_and_average(family, tmp_path):
    if family == "sd-full":
        pipeline, overrides = sd_pipeline(), {}
    else:
        pipeline = klein_pipeline(str(tmp_path / "klein"))
        overrides = {"train_mode": "lora", "lora_rank": 4, "learning_rate": 1e-2}
    uninterrupted = trainer(pipeline, **overrides)
    uninterrupted.train(2)
    uninterrupted.save_state(tmp_path / "state")
    assert (tmp_path / "state" / ema.AVERAGE_FILE).is_file()
    uninterrupted.train(1)

    resumed = trainer(pipeline, **overrides)
    resumed.load_state(tmp_path / "state", 2)
    resumed.train(1)
    weights, average = tensors(uninterrupted)
    assert all_equal(weights, tensors(resumed)[0])
    assert all_equal(average, tensors(resumed)[1])
    assert not all_equal(weights, average)  # the average lags the weights


def test_outputs_and_samples_are_the_average_and_training_goes_on_from_its_weights(tmp_path):
    t = trainer(sd_pipeline())
    t.train(3)
    weights, average = tensors(t)
    pipe = t.inference_pipeline()
    written = weight_files.write_outputs(pipe, tmp_path, weight_files.OutputSettings(
        subject_id="s", precision="fp32"))
    assert written.files
    saved = load_file(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    index = {id(p): i for i, p in enumerate(t.models.trainable)}
    unet_params = [(name, index[id(p)]) for name, p in pipe.unet.named_parameters()]
    assert all(torch.equal(saved[name], average[i]) for name, i in unet_params)
    assert not all(torch.equal(saved[name], weights[i]) for name, i in unet_params)

    # A checkpoint right after sampling holds the training weights, and training goes on from them.
    t.save_state(tmp_path / "state")
    assert all_equal([p.detach() for p in t.models.trainable], weights)
    t.train(1)
    resumed = trainer(sd_pipeline())
    resumed.load_state(tmp_path / "state", 3)
    resumed.train(1)
    assert all_equal(tensors(t)[0], tensors(resumed)[0])


def test_a_checkpoint_without_or_with_another_average_is_refused(tmp_path):
    t = trainer(sd_pipeline(), train_mode="lora", lora_rank=4)
    t.save_state(tmp_path / "state")
    other = trainer(sd_pipeline(), train_mode="lora", lora_rank=4)
    (tmp_path / "state" / ema.AVERAGE_FILE).unlink()
    with pytest.raises(InvalidInputError, match="EMA weights ema.safetensors do not load"):
        other.load_state(tmp_path / "state", 0)
    wider = trainer(sd_pipeline(), train_mode="lora", lora_rank=8)
    wider.average.save(tmp_path / "state")
    with pytest.raises(InvalidInputError, match="EMA weights ema.safetensors hold tensor 0"):
        other.average.load(tmp_path / "state", 0)


def test_without_ema_decay_there_is_no_average(tmp_path):
    t = trainer(sd_pipeline(), ema_decay=0.0, train_mode="lora", lora_rank=4)
    assert t.average is None
    t.train(1)
    t.save_state(tmp_path / "state")
    assert not (tmp_path / "state" / ema.AVERAGE_FILE).exists()
