"""A checkpoint lies under the tenant's --output, so its files may be forged along with the manifest
that lists them (their sizes and sha256 then match). What cannot be resumed is exit 2 naming the
checkpoint and --restart (a retry loads the same files), before the first training step; a
checkpoint past --max-train-steps is refused before any download, never published.

One real checkpoint (a SIGTERM'd run on the S3 server) is copied under a fresh --output per test
and forged there; the reruns are the real CLI in this process."""

from __future__ import annotations

import hashlib
import io
import json
import pickle

import pytest
import torch
from click.testing import CliRunner
from helpers import JobProcess, make_photo, upload_photos
from safetensors.torch import load_file, save_file

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.training.checkpoint import MANIFEST, CheckpointStore

STEPS = 8
COMMON = ["train", "--class-noun", "dog", "--resolution", "64", "--max-train-steps", str(STEPS),
          "--no-prior-preservation", "--sample-steps", "1", "--num-validation-images", "1",
          "--validation-prompt", "a {identifier} {class_noun}", "--log-every", "1",
          "--progress-interval-seconds", "0", "--checkpoint-every", "2", "--metrics-port", "0",
          "--log-format", "json"]


@pytest.fixture(scope="module")
def checkpointed(s3_server, tiny_model, tmp_path_factory):
    """`train` args for an --output, and the local copy of a real checkpoint (its step) that a run
    with these args resumes."""
    source = tmp_path_factory.mktemp("photos")
    for i in range(4):
        make_photo(source / f"{i:02d}.jpg", seed=i)
    bucket = "forged-checkpoints"
    s3_client.s3_client().create_bucket(Bucket=bucket)
    photos = upload_photos(source, f"s3://{bucket}/photos/dog/")
    cache = tmp_path_factory.mktemp("cache")

    def args(output: str, *extra: str) -> list[str]:
        return [*COMMON, "--instance-data", photos, "--base-model", str(tiny_model),
                "--cache-dir", str(cache), "--output", output, *extra]

    original = f"s3://{bucket}/original/"
    process = JobProcess(args(original))
    process.wait_for(rf"step 3/{STEPS}\b")
    process.process.terminate()
    assert process.wait() == ExitCode.TERMINATED, process.output[-3000:]
    newest = CheckpointStore(original, keep=2).list()[0]
    local = tmp_path_factory.mktemp("checkpoint")
    assert CheckpointStore(original, keep=2).fetch(newest, local)
    return args, bucket, newest, local


def copy_checkpoint(checkpointed, name: str, step: int | None = None):
    """The checkpoint under a fresh --output `name` (as the step `step`); its URI and the output."""
    _, bucket, newest, local = checkpointed
    output = f"s3://{bucket}/{name}/"
    (local / "trainer_state.json").unlink(missing_ok=True)  # CheckpointStore.save writes it again
    saved = CheckpointStore(output, keep=2).save(local, step or newest.step, newest.config,
                                                 newest.manifest["identifier"])
    return saved.uri, output


def forge(checkpoint_uri: str, path: str, data: bytes) -> None:
    """Replace one file of the checkpoint, and its manifest entry as a tenant can."""
    storage.write_bytes(storage.join(checkpoint_uri, path), data)
    manifest_uri = storage.join(checkpoint_uri, MANIFEST)
    manifest = json.loads(storage.read_bytes(manifest_uri))
    for entry in manifest["files"]:
        if entry["path"] == path:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    storage.write_bytes(manifest_uri, json.dumps(manifest).encode())


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def moments_of_another_shape(local) -> bytes:
    state = torch.load(local / "optimizer.bin", weights_only=True)
    first = next(iter(state["state"].values()))
    first["exp_avg"] = torch.zeros(first["exp_avg"].numel() + 1)
    return torch_bytes(state)


def weights_of_another_shape(local) -> bytes:
    weights = load_file(local / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.zeros(weights[name].numel() + 1)
    buffer = local.parent / "forged.safetensors"
    save_file(weights, buffer)
    return buffer.read_bytes()


FORGERIES = {
    "optimizer_garbage": ("optimizer.bin", lambda local: b"not a torch file"),
    "optimizer_of_another_model": ("optimizer.bin",
                                   lambda local: torch_bytes({"state": {}, "param_groups": []})),
    "optimizer_moments_of_another_shape": ("optimizer.bin", moments_of_another_shape),
    "scheduler_of_another_layout": ("scheduler.bin",
                                    lambda local: torch_bytes({"last_epoch": "x", "base_lrs": []})),
    "rng_garbage": ("random_states_0.pkl", lambda local: b"not a pickle"),
    "rng_of_other_values": ("random_states_0.pkl",
                            lambda local: pickle.dumps({"random_state": (3, (), None)})),
    "weights_of_another_shape": ("model.safetensors", weights_of_another_shape),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_checkpoint_file_exits_2_naming_the_checkpoint_and_restart(checkpointed, forgery):
    args, _, _, local = checkpointed
    path, forged = FORGERIES[forgery]
    checkpoint_uri, output = copy_checkpoint(checkpointed, forgery)
    forge(checkpoint_uri, path, forged(local))

    outcome = CliRunner().invoke(main, args(output), catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output[-3000:]
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, outcome.output[-3000:]
    assert f"checkpoint {checkpoint_uri} cannot be resumed" in errors[0] and "--restart" in errors[0]
    assert '"message": "step ' not in outcome.output, "refused before the first training step"
    result = json.loads(storage.read_bytes(storage.join(output, "result.json")))
    assert result["status"] == "failed" and result["exit_code"] == ExitCode.INVALID_INPUT
    assert CheckpointStore(output, keep=2).list(), "nothing is deleted without --restart"


def test_a_checkpoint_past_max_train_steps_is_refused_before_any_download(checkpointed):
    args, *_ = checkpointed
    checkpoint_uri, output = copy_checkpoint(checkpointed, "far-ahead", step=999999)
    assert checkpoint_uri.endswith("/step-999999")

    outcome = CliRunner().invoke(main, args(output), catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output[-3000:]
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: checkpoint {checkpoint_uri} is of step 999999, past --max-train-steps "
                      f"{STEPS}; pass --restart to discard it or use another --output"]
    assert "phase download" not in outcome.output
    assert not storage.exists(storage.join(output, "_SUCCESS"))

    restarted = CliRunner().invoke(main, args(output, "--restart"), catch_exceptions=False)
    assert restarted.exit_code == ExitCode.OK, restarted.output[-3000:]
    result = json.loads(storage.read_bytes(storage.join(output, "result.json")))
    assert result["status"] == "succeeded"
    assert result["training"]["steps_done"] == STEPS and "resuming" not in restarted.output
