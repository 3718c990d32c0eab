"""`dreambooth-job toy-world` passes the job's own options (bases.TRAIN_OPTIONS) to every run, with
the flags, choices and bounds `train` declares for them, and `--captions` gives each subject photo
its caption: so a toy-world run with captions, EMA or LoKr is one command (docs/toy-world.md)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.config import introspection
from dreambooth_job.config.option_fields import Role, role_of
from dreambooth_job.toyworld import experiment
from dreambooth_job.toyworld.bases import TRAIN_OPTIONS
from dreambooth_job.training import captions


@pytest.fixture
def started(monkeypatch) -> list[experiment.Ablation]:
    """The ablations `toy-world` would run (none is run)."""
    ablations: list[experiment.Ablation] = []

    def run(ablation: experiment.Ablation) -> None:
        ablations.append(ablation)
        (ablation.output / "table.md").write_text("the table\n")

    monkeypatch.setattr(experiment, "run", run)
    return ablations


def test_every_passed_option_is_a_model_option_with_a_toy_world_flag():
    shown = CliRunner().invoke(main, ["toy-world", "--help"], terminal_width=200).output
    for name in TRAIN_OPTIONS:
        assert role_of(introspection.fields_by_name()[name]) is Role.MODEL
        assert "--" + name.replace("_", "-") + " " in shown


def test_given_options_reach_every_runs_config_and_the_others_stay_the_jobs(started, tmp_path):
    outcome = CliRunner().invoke(main, [
        "toy-world", "--output", str(tmp_path), "--captions", "--caption-dropout", "0.2",
        "--ema-decay", "0.99", "--lr-scheduler", "constant_with_warmup", "--lr-warmup-steps", "10"])
    assert outcome.exit_code == 0, outcome.output
    ablation, = started
    assert ablation.captions
    assert ablation.train_options == {"caption_dropout": 0.2, "ema_decay": 0.99,
                                      "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10}
    config = experiment.train_config(ablation, 0, True, tmp_path / "subject", tmp_path / "run")
    plain = experiment.train_config(experiment.Ablation(output=tmp_path), 0, True,
                                    tmp_path / "subject", tmp_path / "run")
    changed = {k for k, v in config.to_dict().items() if plain.to_dict()[k] != v}
    assert changed == set(ablation.train_options)
    assert "--captions, --caption-dropout 0.2, --ema-decay 0.99" in experiment.options_text(ablation)


@pytest.mark.parametrize("args, message", [
    (["--ema-decay", "1.5"], "--ema-decay must be below 1"),
    (["--caption-dropout-prompt", "empty"], "--caption-dropout-prompt empty has no effect without"),
    (["--optimizer", "sgd"], "'sgd' is not one of"),
])
def test_a_bad_value_is_exit_2_naming_the_option_before_any_run(started, tmp_path, args, message):
    outcome = CliRunner().invoke(main, ["toy-world", "--output", str(tmp_path), *args])
    assert outcome.exit_code == 2 and message in outcome.output, outcome.output
    assert not started


def test_captions_describe_each_photos_background_and_are_removed_when_off(tmp_path):
    subject = experiment.write_subject(tmp_path, 5, captions=True)
    photos = sorted(p.name for p in subject.glob("*.png"))
    read = captions.read_captions(subject, photos, [])
    filled = [captions.fill(read[p], "olis", "ball") for p in photos]
    assert filled == ["a olis ball on a white background", "a olis ball on a green background",
                      "a olis ball on a black background", "a olis ball on a white background",
                      "a olis ball on a green background"]
    experiment.write_subject(tmp_path, 5)
    assert not list(subject.glob("*.txt"))


@pytest.mark.slow
def test_a_toy_world_run_with_captions_ema_and_lokr(tmp_path):
    """Two steps each: the options reach the runs' result.json, and the LoKr rows are measured on
    the LyCORIS file read back (no diffusers file)."""
    outcome = CliRunner().invoke(main, [
        "toy-world", "--output", str(tmp_path), "--seeds", "0", "--steps", "2", "--class-images", "1",
        "--train-mode", "lora", "--lora-rank", "2", "--captions", "--caption-dropout", "0.5",
        "--ema-decay", "0.9", "--lora-variant", "lokr"])
    assert outcome.exit_code == 0, outcome.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["train_options"] == {"caption_dropout": 0.5, "ema_decay": 0.9,
                                                    "lora_variant": "lokr"}
    for variant in experiment.VARIANTS:
        run = tmp_path / "seed-0" / variant
        result = json.loads((run / "result.json").read_text())
        assert (result["config"]["ema_decay"], result["config"]["lora_variant"]) == (0.9, "lokr")
        assert len(result["prompts"]["captions"]) == 5
        assert metrics["runs"]["seed-0"][variant]["adapter_bytes"] == \
            experiment.adapter_file(run).stat().st_size
        assert not (run / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert "--captions, --caption-dropout 0.5, --ema-decay 0.9, --lora-variant lokr" in \
        (tmp_path / "table.md").read_text()
