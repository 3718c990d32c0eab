"""`dreambooth-job bench` on the tiny model: exit codes, the table, and the JSON report's fields."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dreambooth_job.bench.device import peak_tflops
from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.training.trainer import STEP_PHASES

QUICK = ["bench", "--model", "tiny", "--resolution", "32", "--steps", "2", "--warmup", "1"]
CPU = not torch.cuda.is_available()


def bench(*args):
    return CliRunner().invoke(main, [*QUICK, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    outcome = bench("--baseline", "--variant", "use_8bit_adam=true", "--variant",
                    "attention_backend=cudnn", "--variant", "train_batch_size=2",
                    "--variant", "train_mode=lora",
                    "--profile", str(path.parent / "profiles"), "--json", str(path))
    assert outcome.exit_code == ExitCode.OK, outcome.output
    return json.loads(path.read_text()), outcome.output


def test_rows_report_speed_memory_and_flops(report):
    data, _ = report
    rows = {row["name"]: row for row in data["variants"]}
    assert list(rows) == ["default", "baseline", "use_8bit_adam=true", "attention_backend=cudnn",
                          "train_batch_size=2", "train_mode=lora"]
    for name in ("default", "baseline"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["steps_per_second"] > 0
        assert row["images_per_second"] == pytest.approx(2 * row["steps_per_second"])
        assert len(row["step_seconds"]) == 3 and row["measured_steps"] == 2
        assert row["median_step_seconds"] == pytest.approx(1 / row["steps_per_second"])
        assert row["flops_per_step"] > 0 and row["achieved_tflops"] > 0
        assert row["peak_memory_bytes"] > 0
        if CPU:
            assert row["peak_memory_kind"] == "cpu_peak_rss"
            assert row["mfu"] is None and row["peak_tflops"] is None
        assert 0 < row["first_step_seconds"] < row["first_step_since_process_start_seconds"]
    # Encoding every step adds the VAE's and text encoder's FLOPs to the UNet's.
    assert rows["baseline"]["flops_per_step"] > rows["default"]["flops_per_step"]
    assert rows["baseline"]["speedup_vs_baseline"] == 1.0
    # A variant's batch size is its own: 2 photos + 2 class images per step, twice the UNet work.
    doubled = rows["train_batch_size=2"]
    assert doubled["images_per_second"] == pytest.approx(4 * doubled["steps_per_second"])
    assert doubled["flops_per_step"] == pytest.approx(2 * rows["default"]["flops_per_step"], rel=0.05)
    assert rows["default"]["speedup_vs_baseline"] > 0
    if CPU:
        assert rows["use_8bit_adam=true"]["status"] == "unavailable"
        assert "CUDA" in rows["use_8bit_adam=true"]["error"]
        assert rows["attention_backend=cudnn"]["status"] == "error"


def test_profile_writes_an_operator_table_per_row(report):
    data, _ = report
    for row in data["variants"]:
        if row["status"] == "ok":
            with open(row["profile"]) as table:
                header = table.read().splitlines()[1]
            assert "Name" in header and ("Self CUDA" in header if not CPU else "Self CPU" in header)


def test_profile_splits_each_step_into_its_phases(report):
    data, output = report
    rows = {row["name"]: row for row in data["variants"]}
    for name in ("default", "baseline"):
        phases = rows[name]["phase_host_seconds_per_step"]
        assert tuple(phases) == STEP_PHASES
        assert phases["denoiser_forward"] > 0 and phases["backward"] > 0 and phases["optimizer_step"] > 0
        assert sum(phases.values()) <= rows[name]["profiled_step_seconds"]
    # The baseline runs the VAE and the text encoder inside every step; the default reads caches.
    assert (rows["baseline"]["phase_host_seconds_per_step"]["inputs"]
            > 5 * rows["default"]["phase_host_seconds_per_step"]["inputs"])
    assert "profiled steps by phase" in output and "denoiser_forward" in output


def test_report_names_device_versions_and_settings(report):
    data, _ = report
    assert data["device"]["type"] == ("cpu" if CPU else "cuda")
    assert set(data["versions"]) >= {"torch", "diffusers", "transformers", "accelerate"}
    assert data["settings"]["resolution"] == 32 and data["settings"]["images_per_step"] == 2
    assert data["model"]["architecture"] == "tiny" and data["model"]["parameters"]["denoiser"] > 0
    assert data["time_to_first_step_seconds"] > 0


def test_a_lora_row_trains_the_adapters_only(report):
    data, output = report
    rows = {row["name"]: row for row in data["variants"]}
    lora, full = rows["train_mode=lora"], rows["default"]
    assert lora["status"] == "ok", lora
    assert lora["steps_per_second"] > 0 and lora["peak_memory_bytes"] > 0
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"] / 5
    assert full["trainable_parameters"] == data["model"]["parameters"]["denoiser"]
    assert any(line.startswith("train_mode=lora ") and " ok " in line for line in output.splitlines())


def test_table_has_a_row_per_variant_and_says_why_mfu_is_missing(report):
    _, output = report
    lines = output.splitlines()
    assert any(line.startswith("default ") and " ok " in line for line in lines)
    assert any(line.startswith("use_8bit_adam=true ") for line in lines)
    if CPU:
        assert "MFU: not reported" in output


def test_sdxl_refuses_in_one_line_when_memory_is_short(monkeypatch):
    """The decision's input (the memory available) is set to 8 GiB: on a bigger host the real
    value would let it build 3.5 B parameters."""
    from dreambooth_job.bench import device as bench_device

    monkeypatch.setattr(bench_device, "available_memory_bytes", lambda device_type: 8 * 2**30)
    outcome = CliRunner().invoke(main, ["bench", "--model", "sdxl"])
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    message = outcome.output.strip().splitlines()[-1]
    assert "--model sdxl needs about" in message and "8 GiB is available" in message
    assert "not supported" not in outcome.output


def test_sdxl_is_not_refused_when_memory_suffices():
    from dreambooth_job.bench.command import Settings, Variant, memory_refusal

    settings = Settings("sdxl", None, 1024, 1, 1, 0, True, 0, None)
    variants = [Variant("default"), Variant("lora", overrides={"train_mode": "lora"})]
    assert memory_refusal(settings, variants, "cpu", 2**40) is None
    assert "needs about" in memory_refusal(settings, variants, "cpu", 2**30)


@pytest.mark.parametrize("spec", ["no_such_option=1", "resolution", "mixed_precision=fp8"])
def test_bad_variants_exit_2_naming_the_variant(spec):
    outcome = CliRunner().invoke(main, ["bench", "--variant", spec])
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert "--variant" in outcome.output


def test_peaks_are_known_for_datacenter_gpus_only():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", True) == pytest.approx(989.4)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "no", True) == pytest.approx(156.0)
    assert peak_tflops("NVIDIA H200", "no", False) == pytest.approx(67.0)
    assert peak_tflops("AMD EPYC", "no", False) is None


def test_the_sdxl_path_of_bench_trains_full_and_lora_rows(tmp_path):
    """`bench --model sdxl` on a GPU runs the code path this SDXL-shaped tiny model runs here:
    two text encoders, `text_time` conditioning, full and LoRA rows."""
    path = tmp_path / "bench.json"
    outcome = CliRunner().invoke(main, [
        "bench", "--model", "tiny-sdxl", "--resolution", "32", "--steps", "2", "--warmup", "1",
        "--variant", "train_mode=lora", "--json", str(path)], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    data = json.loads(path.read_text())
    assert data["model"]["architecture"] == "tiny-sdxl"
    rows = {row["name"]: row for row in data["variants"]}
    assert [rows[name]["status"] for name in ("default", "train_mode=lora")] == ["ok", "ok"]
    assert rows["default"]["steps_per_second"] > 0 and rows["train_mode=lora"]["steps_per_second"] > 0
    assert 0 < rows["train_mode=lora"]["trainable_parameters"] < rows["default"]["trainable_parameters"]
