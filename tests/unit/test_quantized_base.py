"""--base-precision fp8 / nf4 (training/quantized_base.py): a quantized frozen base for LoRA.

Users on a machine without CUDA get the refusal (preflight); the training path itself is tested
here on the CPU, where the installed torchao and bitsandbytes also quantize: the tiny FLUX.2
[klein] transformer's linear layers hold quantized weights, and its LoRA adapters still train."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")

from dreambooth_job.bench.command import Settings, Variant, _images, bench_config  # noqa: E402
from dreambooth_job.config.train_config import TrainConfig  # noqa: E402
from dreambooth_job.devtools import tiny_models  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.training import lora_adapters, preflight, quantized_base  # noqa: E402
from dreambooth_job.training.trainer import Trainer  # noqa: E402

SETTINGS = Settings(model="tiny", base_model=None, resolution=32, batch_size=1, steps=2, warmup=0,
                    prior_preservation=True, seed=0)
REQUIRED = {"instance_data": "d", "class_noun": "dog", "output": "o"}


@functools.cache
def klein_pipeline(directory):
    return tiny_models.build_tiny_flux2_klein_pipeline(directory)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return klein_pipeline(str(tmp_path_factory.mktemp("klein")))


def lora_trainer(pipeline, precision: str) -> Trainer:
    config = bench_config(SETTINGS, Variant("q", {"train_mode": "lora", "lora_rank": 4,
                                                  "learning_rate": 1e-2, "base_precision": precision}))
    trainer = Trainer(config, copy.deepcopy(pipeline), instance_images=_images(SETTINGS, 0),
                      instance_prompt="a sks dog", class_images=_images(SETTINGS, 1000),
                      class_prompt="a dog")
    trainer.setup()
    return trainer


# -- the refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp8", "nf4"])
def test_a_quantized_base_is_refused_on_a_machine_without_cuda(precision):
    config = TrainConfig(**REQUIRED, train_mode="lora", base_precision=precision)
    with pytest.raises(InvalidInputError) as refused:
        preflight.check_capabilities(config, "cpu")
    assert refused.value.message == (f"--base-precision {precision} needs a CUDA GPU and this "
                                     "machine has none: use --base-precision auto or request a GPU")
    preflight.check_capabilities(TrainConfig(**REQUIRED, train_mode="lora"), "cpu")  # auto: fine


def test_a_missing_library_on_cuda_is_one_line_naming_its_extra(monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else found(name, *a))
    assert quantized_base.missing_capability("fp8", "cuda") == (
        "--base-precision fp8 needs torchao, which is not installed (pip install 'dreambooth-job[quant]')")
    assert quantized_base.missing_capability("auto", "cpu") is None


@pytest.mark.parametrize("overrides, flag", [
    ({"train_mode": "full"}, "--train-mode lora"),
    ({"train_mode": "lora", "lora_merge": True}, "--lora-merge"),
    ({"train_mode": "lora", "export_single_file": True}, "--export-single-file"),
])
def test_a_quantized_base_is_lora_only_and_never_merged(overrides, flag):
    with pytest.raises(InvalidInputError) as refused:
        TrainConfig(**REQUIRED, base_precision="nf4", **overrides)
    assert flag in refused.value.message and "--base-precision nf4" in refused.value.message
    assert "\n" not in refused.value.message


# -- the training path, on the CPU where the libraries allow it --------------------------------

@pytest.mark.parametrize("precision, library", [("nf4", "bitsandbytes"), ("fp8", "torchao")])
def test_lora_trains_on_a_quantized_klein_transformer(pipeline, precision, library):
    pytest.importorskip(library)
    trainer = lora_trainer(pipeline, precision)
    denoiser = trainer.models.denoiser
    names = quantized_base.quantizable_layers(pipeline.transformer)
    assert names  # the tiny transformer's linear layers are 16-aligned
    quantized = {name: module.get_base_layer() if hasattr(module, "get_base_layer") else module
                 for name, module in denoiser.named_modules() if name in names}
    weights = [layer.weight for layer in quantized.values()]
    if precision == "nf4":
        assert all(w.dtype == torch.uint8 for w in weights)  # packed 4-bit
    else:
        assert all(type(w).__name__ == "Float8Tensor" for w in weights)
    adapters = lora_adapters.lora_parameters(denoiser)
    assert adapters and all(p.dtype == torch.float32 for p in adapters)
    before = [p.detach().clone() for p in adapters]
    result = trainer.train()
    assert result.steps_done == SETTINGS.steps and torch.isfinite(torch.tensor(result.final_loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, adapters))  # the adapters moved
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in adapters)


@pytest.mark.parametrize("precision, library", [("nf4", "bitsandbytes"), ("fp8", "torchao")])
def test_a_resumed_run_on_a_quantized_base_ends_like_one_that_never_stopped(
        pipeline, tmp_path, precision, library):
    """The checkpoint holds the adapters only; the base is quantized again, the same way, on resume."""
    pytest.importorskip(library)
    straight = lora_trainer(pipeline, precision)
    straight.train()
    stopped = lora_trainer(pipeline, precision)
    stopped.train(num_steps=1)
    stopped.save_state(tmp_path / "state")
    resumed = lora_trainer(pipeline, precision)
    resumed.load_state(tmp_path / "state", step=1)
    resumed.train()
    for a, b in zip(lora_adapters.lora_parameters(straight.models.denoiser),
                    lora_adapters.lora_parameters(resumed.models.denoiser)):
        assert torch.equal(a, b)
