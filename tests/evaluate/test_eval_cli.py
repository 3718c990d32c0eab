"""`dreambooth-job evaluate`: the JSON it writes (a model of each family) and its exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import every_family
from helpers import random_image as photo

from dreambooth_job.cli import main


@pytest.fixture
def photo_dir(tmp_path):
    path = tmp_path / "photos"
    path.mkdir()
    for i in range(3):
        photo(i, size=40).save(path / f"{i:02d}.png")
    return path


def run(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def quick_args(tmp_path, photo_dir):
    return ["--instance-data", photo_dir, "--class-noun", "dog", "--identifier", "sks",
            "--cache-dir", tmp_path / "cache", "--resolution", 32, "--sample-steps", 2,
            "--images-per-prompt", 2, "--eval-max-prompts", 1, "--eval-class-images", 1,
            "--min-image-side", 32, "--log-format", "text"]


@every_family
def test_evaluate_writes_every_metric_and_the_protocol(
        tmp_path, photo_dir, family_model, tiny_dino_dir, tiny_clip_dir, tiny_lpips_dir):
    out = tmp_path / "run" / "result.json"
    model = family_model.path
    result = run("--model", model, "--output", out, *quick_args(tmp_path, photo_dir),
                 "--dino-model", tiny_dino_dir, "--clip-model", tiny_clip_dir,
                 "--lpips-model", tiny_lpips_dir, "--baseline", "--base-model", model)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["identifier"] == "sks" and report["model"] == str(model)
    assert list(report["metrics"]) == ["base", "finetuned", "real", "protocol"]
    for label in ("base", "finetuned"):
        for metric in ("dino", "clip_i", "clip_t", "pres", "div", "div_dino"):
            assert isinstance(report["metrics"][label][metric], float), (label, metric)
    protocol = report["metrics"]["protocol"]
    assert protocol["prompt_set"] == "live" and protocol["images_per_prompt"] == 2
    assert protocol["seeds"] == [0, 1]
    assert protocol["models"]["dino"]["source"] == str(tiny_dino_dir)
    assert protocol["models"]["clip"]["source"] == str(tiny_clip_dir)
    assert isinstance(report["metrics"]["real"]["dino"], float)


def test_missing_evaluator_weights_exit_zero_with_reasons(tmp_path, photo_dir, tiny_pipeline_dir):
    # The defaults are hub ids; the hub is offline here, like a cluster without egress.
    result = run("--model", tiny_pipeline_dir, "--output", tmp_path / "out",
                 *quick_args(tmp_path, photo_dir))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    row = report["metrics"]["finetuned"]
    assert all(row[m] is None for m in ("dino", "clip_i", "clip_t", "pres", "div", "div_dino"))
    assert "--dino-model" in row["unavailable"]["dino"]
    assert "--clip-model" in row["unavailable"]["clip_t"]
    assert report["metrics"]["protocol"]["models"]["clip"]["loaded"] is False


@pytest.mark.parametrize("problem", ["no_photos", "no_pipeline", "bad_prompt_set", "no_class_noun"])
def test_bad_input_exits_2(tmp_path, photo_dir, tiny_pipeline_dir, problem):
    args = quick_args(tmp_path, photo_dir)
    model = tiny_pipeline_dir
    if problem == "no_photos":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
    elif problem == "no_pipeline":
        model = tmp_path
    elif problem == "bad_prompt_set":
        args += ["--prompt-set", tmp_path / "missing.txt"]
    else:
        args = args[:2] + args[4:]
    result = run("--model", model, *args, "--dino-model", "", "--clip-model", "")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") or "error: " in result.output
