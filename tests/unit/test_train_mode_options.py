"""--train-mode and the LoRA options: bounds, and the `auto` options (--learning-rate,
--lora-alpha) from every source, resolved in one place (config.resolve_auto)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.cli_options import resolve_train_config
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import ExitCode, InvalidInputError

REQUIRED = {"instance_data": "s3://b/photos/", "class_noun": "dog", "output": "s3://b/out/"}


@pytest.mark.parametrize("mode, rate", [("full", 5e-6), ("lora", 1e-4)])
def test_the_learning_rate_defaults_per_mode_and_an_explicit_one_wins(mode, rate):
    config = cfg.TrainConfig(**REQUIRED, train_mode=mode)
    assert config.learning_rate is None and config.resolved_learning_rate == rate
    assert cfg.TrainConfig(**REQUIRED, train_mode=mode, learning_rate=3e-5).resolved_learning_rate == 3e-5


def test_lora_alpha_defaults_to_the_rank():
    assert cfg.TrainConfig(**REQUIRED, lora_rank=8).resolved_lora_alpha == 8
    assert cfg.TrainConfig(**REQUIRED, lora_rank=8, lora_alpha=4).resolved_lora_alpha == 4
    assert cfg.TrainConfig(**REQUIRED).lora_target_modules == ["to_q", "to_k", "to_v", "to_out.0"]


def _train_config(args, env=None, config_file=None):
    ctx = main.commands["train"].make_context(
        "train", [*args, *(["--config", str(config_file)] if config_file else [])])
    return resolve_train_config(ctx.params, env=env or {})


def test_auto_from_the_flag_beats_env_and_file(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump({**REQUIRED, "learning_rate": 1e-5, "lora_alpha": 3}))
    env = {"DREAMBOOTH_LEARNING_RATE": "2e-5"}
    assert _train_config([], env, config_file).learning_rate == 2e-5
    assert _train_config(["--learning-rate", "auto"], env, config_file).learning_rate is None
    assert _train_config(["--learning-rate", "AUTO"], env, config_file).learning_rate is None
    assert _train_config(["--learning-rate", "4e-5"], env, config_file).learning_rate == 4e-5
    assert _train_config([], {"DREAMBOOTH_LEARNING_RATE": "auto"}, config_file).learning_rate is None
    assert _train_config([], {}, config_file).lora_alpha == 3
    assert _train_config(["--lora-alpha", "auto"], {}, config_file).lora_alpha is None


def test_auto_in_a_config_file_or_a_python_config(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump({**REQUIRED, "learning_rate": "auto", "lora_alpha": None}))
    config = config_sources.resolve_config(env={}, config_file=config_file)
    assert config.learning_rate is None and config.lora_alpha is None
    assert cfg.TrainConfig(**REQUIRED, learning_rate="auto").learning_rate is None


def test_lora_options_round_trip_through_the_cli_parser():
    original = cfg.TrainConfig(**REQUIRED, train_mode="lora", lora_rank=4, lora_dropout=0.1,
                               lora_target_modules=["to_q", "conv1"])
    args = config_sources.to_cli_args(original)
    assert args[args.index("--learning-rate") + 1] == "auto"
    parsed = _train_config(args)
    assert parsed.to_dict() == {**original.to_dict(), "cache_dir": parsed.cache_dir}


@pytest.mark.parametrize("args, named", [
    (["--learning-rate", "fast"], "'fast' is not a float or auto"),
    (["--lora-rank", "0"], "--lora-rank must be between 1 and 1024, got 0"),
    (["--lora-rank", "auto"], "--lora-rank"),
    (["--lora-alpha", "0"], "--lora-alpha must be positive, got 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be below 1, got 1.0"),
    (["--lora-dropout", "-0.1"], "--lora-dropout must not be negative, got -0.1"),
    (["--train-mode", "qlora"], "--train-mode"),
    (["--lora-target-modules", "to_q; rm -rf"], "--lora-target-modules must name layers"),
])
def test_bad_lora_options_exit_2_in_one_line(args, named):
    result = CliRunner().invoke(main, ["train", "--instance-data", "d", "--class-noun", "dog",
                                       "--output", "o", *args], env={})
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert named in result.output


def test_a_bad_env_value_says_auto_is_allowed():
    with pytest.raises(InvalidInputError, match="DREAMBOOTH_LEARNING_RATE: learning_rate must be "
                                                "float or auto, got 'fast'"):
        config_sources.resolve_config(env={"DREAMBOOTH_LEARNING_RATE": "fast"})


def test_an_empty_target_list_is_refused():
    with pytest.raises(InvalidInputError, match="--lora-target-modules must name at least one layer"):
        cfg.TrainConfig(lora_target_modules=[])


def test_defaults_and_help_show_auto():
    printed = yaml.safe_load(CliRunner().invoke(main, ["config", "--print-defaults"]).output)
    assert printed["learning_rate"] == "auto" and printed["lora_alpha"] == "auto"
    assert printed["train_mode"] == "full" and printed["lora_rank"] == 16
    assert cfg.TrainConfig(**{**printed, **REQUIRED}) == cfg.TrainConfig(
        **REQUIRED, cache_dir=printed["cache_dir"])
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--learning-rate FLOAT|AUTO" in help_text
