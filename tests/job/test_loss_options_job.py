"""The loss, noise and learning-rate options through the job, on the tiny models and the real S3
server: SD trains with --snr-gamma, --noise-offset and a cosine schedule with warm-up, the logged
learning rate follows the schedule, and a run stopped by SIGTERM resumes to the uninterrupted
run's weights, bitwise; FLUX.2 [klein] trains with logit-normal timesteps, cosmap weighting and
offset noise, and refuses --snr-gamma in one line (exit 2)."""

from __future__ import annotations

import json
import math

import pytest
from helpers import JobProcess, job_args
from test_resilience import COMMON, STEPS, assert_same_weights, final_weights, interrupt

from dreambooth_job.exit_codes import ExitCode

DDPM_OPTIONS = ["--snr-gamma", "5", "--noise-offset", "0.1", "--lr-scheduler", "cosine",
                "--lr-warmup-steps", "3"]
FLOW_OPTIONS = ["--timestep-sampling", "logit-normal", "--logit-std", "0.8", "--flow-weighting",
                "cosmap", "--noise-offset", "0.05"]


@pytest.fixture
def job(bucket, photo_dir, family_model, tmp_path):
    """The job's arguments for a run into s3://bucket/<output>/ (test_resilience.py's)."""
    return job_args(COMMON, bucket, photo_dir, family_model.path, tmp_path / "cache")


def logged_learning_rates(output: str) -> dict[int, float]:
    """Each step's learning rate from the job's JSON progress lines."""
    rates = {}
    for line in output.splitlines():
        if line.startswith("{") and '"progress"' in line:
            progress = json.loads(line)["progress"]
            rates[progress["step"]] = progress["learning_rate"]
    return rates


def test_sd_trains_with_min_snr_offset_noise_and_a_cosine_schedule_and_resumes_bitwise(job, bucket,
                                                                                        tmp_path):
    reference = JobProcess(job("reference", *DDPM_OPTIONS))
    assert reference.wait() == ExitCode.OK, reference.output[-3000:]
    # diffusers' cosine schedule with warm-up: linear to the peak over 3 steps, then half a cosine.
    rates = logged_learning_rates(reference.output)
    for step in range(1, STEPS + 1):
        factor = (step / 3 if step < 3
                  else 0.5 * (1 + math.cos(math.pi * (step - 3) / (STEPS - 3))))
        assert rates[step] == pytest.approx(1e-3 * factor, rel=1e-6), step

    run = f"s3://{bucket}/preempted/"
    interrupt(job("preempted", *DDPM_OPTIONS), at_step=6)
    changed = JobProcess(job("preempted", *DDPM_OPTIONS[:-4]))
    assert changed.wait() == ExitCode.INVALID_INPUT
    assert "differs in: lr_scheduler, lr_warmup_steps" in changed.output
    resumed = JobProcess(job("preempted", *DDPM_OPTIONS))
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert "resuming from checkpoint" in resumed.output
    assert_same_weights(final_weights(run, tmp_path),
                        final_weights(f"s3://{bucket}/reference/", tmp_path))


@pytest.mark.parametrize("family_model", ["flux2-klein"], indirect=True)
def test_a_flow_family_trains_with_its_timestep_sampling_and_weighting_and_refuses_snr_gamma(job):
    trained = JobProcess(job("flow", *FLOW_OPTIONS))
    assert trained.wait() == ExitCode.OK, trained.output[-3000:]
    refused = JobProcess(job("refused", "--snr-gamma", "5"))
    assert refused.wait() == ExitCode.INVALID_INPUT
    assert ("--snr-gamma 5.0 does not apply to this base model, which trains by flow matching"
            in refused.output)
