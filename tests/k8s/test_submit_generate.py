"""`dreambooth-job submit-generate` and `submit(GenerateJobSpec)` against a real kube-apiserver."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.generation.generate_config import GenerateConfig
from dreambooth_job.k8s import ClusterSettings, GenerateJobSpec, build_generate_job, job_name, submit
from dreambooth_job.k8s.generate_job import generate_job_name

RUN = "s3://runs/dog/"
GEN = ["--model", RUN, "--output", "s3://gen/dog/", "--prompt", "a {identifier} {class_noun} at sea",
       "--num-images", "8"]
DOG = ["--instance-data", "s3://photos/dog/", "--class-noun", "dog", "--output", RUN,
       "--subject-id", "dog"]


def run(*args, expect=ExitCode.OK):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def test_dry_run_prints_the_builders_generate_job(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    manifest = yaml.safe_load(run("submit-generate", *GEN, "--image", "reg/db:1", "--dry-run"))
    config = GenerateConfig(model=RUN, output="s3://gen/dog/", num_images=8,
                            prompts=["a {identifier} {class_noun} at sea"])
    assert manifest == build_generate_job(GenerateJobSpec(
        generate=config, cluster=ClusterSettings(image="reg/db:1")))


def test_submit_generate_beside_the_subjects_training_job(kubeconfig, namespace):
    trained = job_name("dog")
    assert run("submit", *DOG).strip() == f"created job {namespace}/{trained}"
    name = generate_job_name(RUN, "s3://gen/dog/")
    assert run("submit-generate", *GEN).strip() == f"created job {namespace}/{name}"
    assert "already exists for this --model and --output: not created" in run("submit-generate", *GEN)
    # The Python API: the same Job, found again rather than created twice.
    job = submit(GenerateJobSpec(generate=GenerateConfig(model=RUN, output="s3://gen/dog/")))
    assert (job.name, job.created) == (name, False)
    assert "already exists for this subject" in run("submit", *DOG)  # training's Job untouched


def test_bad_generate_submissions_exit_2_before_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    for args, message in (
            (["--model", RUN], "missing required option(s): --output"),
            ([*GEN, "--sampler", "euler-a"], "--sampler"),
            ([*GEN, "--prompt", "a {colour} {class_noun}"], "placeholder"),
            ([*GEN, "--num-images", "1000"], "--num-images must be between 1 and 64")):
        result = CliRunner().invoke(main, ["submit-generate", *args, "--dry-run"])
        assert result.exit_code == ExitCode.INVALID_INPUT and message in result.output, result.output
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES", "s3://runs/,s3://tenant-a/")
    result = CliRunner().invoke(main, ["submit-generate", *GEN, "--dry-run"])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "--output s3://gen/dog/ is outside the prefixes the operator allows" in result.output
