"""`dreambooth-job toy-world --train-mode lora`: the ablation's runs train LoRA adapters through the
real job, and the fine-tuned rows are measured on the base model plus the published adapters.
The 3-seed LoRA numbers are in docs/toy-world.md; this only checks the mode reaches the job."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.config.choices import DEFAULT_LORA_TARGETS
from dreambooth_job.toyworld import bases, experiment
from dreambooth_job.training.lora_adapters import UNET_CONV_TARGETS


def _config(tmp_path, **settings):
    ablation = experiment.Ablation(output=tmp_path, **settings)
    config = experiment.train_config(ablation, 0, True, tmp_path / "subject", tmp_path / "run")
    config.validate()
    return config


def test_lora_mode_trains_adapters_on_attention_and_convolutions_at_the_toys_rate(tmp_path):
    config = _config(tmp_path, train_mode="lora")
    assert config.train_mode == "lora"
    assert config.learning_rate == bases.LEARNING_RATES["lora"]
    assert config.lora_rank == 8
    assert set(UNET_CONV_TARGETS) | {"to_q", "to_k", "to_v", "to_out.0"} == set(config.lora_target_modules)


def test_full_mode_keeps_the_measured_settings(tmp_path):
    config = _config(tmp_path)
    assert (config.train_mode, config.learning_rate) == ("full", 4e-4)
    assert config.lora_target_modules == list(DEFAULT_LORA_TARGETS)  # LoRA settings left alone


def test_an_explicit_learning_rate_and_targets_win(tmp_path):
    config = _config(tmp_path, train_mode="lora", learning_rate=1e-3, lora_rank=4,
                     lora_target_modules=["to_q", "conv1"])
    assert config.learning_rate == 1e-3
    assert (config.lora_rank, config.lora_target_modules) == (4, ["to_q", "conv1"])


@pytest.mark.slow
def test_toy_world_lora_command_measures_the_published_adapters(tmp_path):
    result = CliRunner().invoke(main, [
        "toy-world", "--train-mode", "lora", "--output", str(tmp_path), "--seeds", "0", "--steps", "2",
        "--class-images", "1", "--lora-rank", "2", "--lora-target-modules", "to_q",
        "--lora-target-modules", "conv1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["train_mode"] == "lora"
    assert metrics["settings"]["lora_target_modules"] == ["to_q", "conv1"]
    for variant in experiment.VARIANTS:
        run = tmp_path / "seed-0" / variant
        adapter = run / "lora" / "pytorch_lora_weights.safetensors"
        assert metrics["runs"]["seed-0"][variant]["adapter_bytes"] == adapter.stat().st_size
        assert not (run / "model").exists()  # no merged pipeline: the rows are base + adapter
    assert "--train-mode lora" in (tmp_path / "table.md").read_text()


def test_toy_world_rejects_an_unknown_train_mode(tmp_path):
    result = CliRunner().invoke(main, ["toy-world", "--train-mode", "dora", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "dora" in result.output and "--train-mode" in result.output
