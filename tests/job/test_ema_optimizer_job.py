"""--ema-decay and --optimizer through the whole job (the real S3 server, the job as a child
process, the tiny SD model): a run preempted by SIGTERM and resumed publishes the same weights as
one that never stopped, with the average and Prodigy's state in its checkpoints; the published
model/ is the average's, not the last step's."""

from __future__ import annotations

import pytest
import torch
from helpers import JobProcess, job_args
from safetensors.torch import load_file

from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.training import ema
from dreambooth_job.training.checkpoint import CheckpointStore

STEPS = 8
COMMON = ["train", "--class-noun", "dog", "--resolution", "64", "--max-train-steps", str(STEPS),
          "--num-class-images", "2", "--sample-steps", "2", "--num-validation-images", "1",
          "--validation-prompt", "a {identifier} {class_noun}", "--log-every", "1",
          "--progress-interval-seconds", "0", "--checkpoint-every", "3", "--metrics-port", "0",
          "--log-format", "json", "--train-mode", "lora", "--lora-rank", "4",
          "--optimizer", "prodigy", "--ema-decay", "0.9"]


@pytest.fixture
def job(bucket, photo_dir, family_model, tmp_path):
    return job_args(COMMON, bucket, photo_dir, family_model.path, tmp_path / "cache")


def published(output_uri: str, tmp_path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's published lora/ files, by file and name."""
    local = tmp_path / output_uri.rstrip("/").rsplit("/", 1)[-1]
    storage.download_dir(storage.join(output_uri, "lora"), local)
    return {f"{file.relative_to(local)}:{name}": tensor
            for file in sorted(local.rglob("*.safetensors")) for name, tensor in load_file(file).items()}


def test_a_preempted_ema_prodigy_run_resumes_to_the_uninterrupted_runs_average(job, bucket, tmp_path):
    reference = JobProcess(job("reference"))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]
    expected = published(f"s3://{bucket}/reference/", tmp_path)

    run = f"s3://{bucket}/preempted/"
    stopped = JobProcess(job("preempted"))
    stopped.wait_for(rf"step 4/{STEPS}\b")
    stopped.process.terminate()
    assert stopped.wait() == ExitCode.TERMINATED, stopped.output[-3000:]
    newest = CheckpointStore(run, keep=2).list()[0]
    assert ema.AVERAGE_FILE in {f["path"] for f in newest.manifest["files"]}

    resumed = JobProcess(job("preempted"))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"at step {newest.step}" in resumed.output
    got = published(run, tmp_path)
    assert expected and got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # Without the average the same run publishes other adapters: what was published is the EMA's.
    plain = JobProcess(job("plain", "--ema-decay", "0"))
    assert plain.wait() == ExitCode.OK, plain.output[-3000:]
    other = published(f"s3://{bucket}/plain/", tmp_path)
    assert other.keys() == expected.keys()
    assert not all(torch.equal(other[k], expected[k]) for k in expected)
