"""Start-up checks: an option this machine cannot run is exit 2 and one line, before any download."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner
from helpers import upload_photos

from dreambooth_job.cli import main
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.storage import places as storage
from dreambooth_job.training.preflight import missing_capabilities

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU machine refuses")


def dog(**options) -> cfg.TrainConfig:
    return cfg.TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output="s3://runs/dog/",
                           **options)


@pytest.fixture
def run_args(bucket, photo_dir, tiny_model, tmp_path):
    """A job that would train: real photos in a real bucket and a real (tiny) model."""
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    return ["train", "--instance-data", photos, "--class-noun", "dog", "--base-model", str(tiny_model),
            "--output", f"s3://{bucket}/runs/dog/", "--cache-dir", str(tmp_path / "cache"),
            "--resolution", "64", "--max-train-steps", "2", "--num-class-images", "2",
            "--sample-steps", "2", "--metrics-port", "0", "--log-format", "text"]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@CPU_ONLY
def test_8bit_adam_on_a_cpu_machine_is_exit_2_before_anything_is_downloaded(run_args, bucket):
    outcome = CliRunner().invoke(main, [*run_args, "--use-8bit-adam"], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    [line] = error_lines(outcome.output)
    assert "--use-8bit-adam" in line and "CUDA" in line
    assert "phase download" not in outcome.output
    # Not even the lease, which the job takes before its first download, was written.
    assert storage.list_files(f"s3://{bucket}/runs/") == []


@CPU_ONLY
@pytest.mark.parametrize("precision", ["fp8", "nf4"])
def test_a_quantized_base_on_a_cpu_machine_is_exit_2_before_anything_is_downloaded(
        run_args, bucket, precision):
    outcome = CliRunner().invoke(main, [*run_args, "--train-mode", "lora", "--base-precision", precision],
                                 catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    [line] = error_lines(outcome.output)
    assert f"--base-precision {precision}" in line and "CUDA" in line
    assert "phase download" not in outcome.output
    assert storage.list_files(f"s3://{bucket}/runs/") == []


@CPU_ONLY
def test_compile_unet_without_a_compiler_is_exit_2_before_anything_is_downloaded(
        run_args, bucket, tmp_path):
    no_tools = tmp_path / "empty-bin"
    no_tools.mkdir()
    env = {"PATH": str(no_tools), "CC": None, "CXX": None}
    outcome = CliRunner().invoke(main, [*run_args, "--compile-unet"], env=env, catch_exceptions=False)
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    [line] = error_lines(outcome.output)
    assert "--compile-unet" in line and "C++ compiler" in line
    assert storage.list_files(f"s3://{bucket}/runs/") == []


def test_default_options_need_nothing_special():
    assert missing_capabilities(dog(), "cpu") == []
    assert missing_capabilities(dog(), "cuda") == []


def test_8bit_adam_needs_cuda_then_bitsandbytes():
    [problem] = missing_capabilities(dog(use_8bit_adam=True), "cpu")
    assert problem.startswith("--use-8bit-adam needs a CUDA GPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        [problem] = missing_capabilities(dog(use_8bit_adam=True), "cuda")
        assert problem.startswith("--use-8bit-adam needs bitsandbytes")
    else:
        assert missing_capabilities(dog(use_8bit_adam=True), "cuda") == []


def test_compile_unet_needs_the_compiler_of_its_backend(monkeypatch, tmp_path):
    gcc, gxx = shutil.which("gcc"), shutil.which("g++")
    if not (gcc and gxx):
        pytest.skip("needs gcc and g++ on this machine to point $CC and $CXX at")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    compiled = dog(compile_unet=True)
    # CUDA: Triton builds its launchers with a C compiler; CPU: Inductor's kernels need C++.
    [on_cuda] = missing_capabilities(compiled, "cuda")
    [on_cpu] = missing_capabilities(compiled, "cpu")
    assert "--compile-unet needs a C compiler" in on_cuda and "$CC" in on_cuda
    assert "--compile-unet needs a C++ compiler" in on_cpu and "$CXX" in on_cpu
    monkeypatch.setenv("CC", gcc)
    monkeypatch.setenv("CXX", gxx)
    assert missing_capabilities(compiled, "cuda") == []
    assert missing_capabilities(compiled, "cpu") == []
    # A named compiler that does not exist is as good as none.
    monkeypatch.setenv("CC", str(empty / "gcc"))
    assert missing_capabilities(compiled, "cuda") != []
