"""One rule for "the same run" (docs/options.md): a checkpoint is resumed, and a completed run left
alone, only when every `model`-role option matches what was recorded; an option that an older
release did not record matches at its default. The job runs as a child process on local
directories; every refusal comes before any download, so no model or photo is needed."""

from __future__ import annotations

import json

import pytest
from helpers import JobProcess

from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs.result import COMPLETION_MARKER, RESULT_FILE
from dreambooth_job.storage import places as storage
from dreambooth_job.training.checkpoint import CheckpointStore


@pytest.fixture
def run(tmp_path):
    """The recorded config of a run in tmp_path/run, and `train` args for rerunning it."""
    photos, output = tmp_path / "photos", tmp_path / "run"
    photos.mkdir()
    recorded = cfg.TrainConfig(instance_data=str(photos), class_noun="dog", output=str(output))
    common = ["train", "--instance-data", str(photos), "--class-noun", "dog", "--output", str(output),
              "--cache-dir", str(tmp_path / "cache"), "--metrics-port", "0", "--log-format", "json"]
    return recorded, common


def write_checkpoint(config: cfg.TrainConfig, tmp_path, *, unrecorded: tuple[str, ...] = ()) -> None:
    """A checkpoint of `config` as the job writes one, its record lacking the `unrecorded` options
    (as one written by a release that did not have them)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "model.safetensors").write_bytes(b"weights")
    recorded = {k: v for k, v in config.to_dict().items() if k not in unrecorded}
    CheckpointStore(config.output, keep=2).save(state, 4, recorded, identifier="sks")


def write_completed_run(config: cfg.TrainConfig, *, unrecorded: tuple[str, ...] = ()) -> None:
    recorded = {k: v for k, v in config.to_dict().items() if k not in unrecorded}
    result = {"status": "succeeded", "config": recorded, "config_fingerprint": "of-an-older-release"}
    storage.write_bytes(storage.join(config.output, RESULT_FILE), json.dumps(result).encode())
    storage.write_bytes(storage.join(config.output, COMPLETION_MARKER), b"")


def refused_for(process: JobProcess) -> str:
    assert process.wait() == ExitCode.INVALID_INPUT, process.output[-3000:]
    assert "phase download" not in process.output, "the conflict is found before any download"
    return process.output


@pytest.mark.parametrize(("change", "field"), [
    (["--learning-rate", "1e-4"], "learning_rate"),  # resumed silently before the roles
    (["--max-train-steps", "400"], "max_train_steps"),
    (["--lr-scheduler", "cosine"], "lr_scheduler"),
    (["--num-class-images", "50"], "num_class_images"),
    (["--guidance-scale", "3.0"], "guidance_scale"),
    (["--mixed-precision", "no"], "mixed_precision"),
    (["--random-flip"], "random_flip"),
    (["--seed", "7"], "seed"),
])
def test_changing_a_model_option_on_checkpoints_exits_2_naming_it(run, tmp_path, change, field):
    recorded, common = run
    write_checkpoint(recorded, tmp_path)
    output = refused_for(JobProcess([*common, *change]))
    assert f"written with another config (differs in: {field});" in output
    assert "--restart" in output
    assert CheckpointStore(recorded.output, keep=2).list(), "nothing is deleted without --restart"


def test_every_differing_model_option_is_named(run, tmp_path):
    recorded, common = run
    write_checkpoint(recorded, tmp_path)
    output = refused_for(JobProcess([*common, "--seed", "7", "--learning-rate", "1e-4",
                                     "--log-every", "3"]))
    assert "differs in: learning_rate, seed);" in output


def test_changing_operational_options_on_checkpoints_goes_on_to_resume(run, tmp_path):
    recorded, common = run
    write_checkpoint(recorded, tmp_path)
    process = JobProcess([*common, "--log-every", "3", "--checkpoint-every", "5", "--adam-impl", "loop",
                          "--sample-batch-size", "2", "--no-cache-latents", "--validation-prompt",
                          "a {identifier} {class_noun} on a sofa"])
    process.wait()
    assert "another config" not in process.output
    assert "phase download started" in process.output, process.output[-3000:]


def test_an_option_an_older_checkpoint_did_not_record_matches_at_its_default(run, tmp_path):
    recorded, common = run
    write_checkpoint(recorded, tmp_path, unrecorded=("learning_rate", "guidance_scale"))
    at_default = JobProcess(common)
    at_default.wait()
    assert "another config" not in at_default.output
    assert "phase download started" in at_default.output, at_default.output[-3000:]

    output = refused_for(JobProcess([*common, "--learning-rate", "1e-4"]))
    assert "differs in: learning_rate);" in output


def test_a_completed_run_of_an_older_release_is_still_the_same_run(run):
    recorded, common = run
    write_completed_run(recorded, unrecorded=("learning_rate",))
    again = JobProcess(common)
    assert again.wait() == ExitCode.OK, again.output[-3000:]
    assert "already holds a completed run" in again.output

    output = refused_for(JobProcess([*common, "--learning-rate", "1e-4"]))
    assert "holds a completed run of another config (differs in: learning_rate);" in output


@pytest.mark.parametrize("forged", [b"{not json", b"[]", b"[" * 200_000 + b"]" * 200_000,
                                    b'{"status": "succeeded", "training": []}'],
                         ids=["invalid", "list", "deep", "wrong-type"])
def test_a_forged_result_of_a_completed_run_exits_2_naming_it_and_force(run, forged):
    recorded, common = run
    write_completed_run(recorded)
    storage.write_bytes(storage.join(recorded.output, RESULT_FILE), forged)
    output = refused_for(JobProcess(common))
    assert "holds a completed run whose result.json unreadable" in output
    assert "pass --force to replace it" in output
    assert "Traceback" not in output
