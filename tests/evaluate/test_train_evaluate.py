"""`train --evaluate`: the paper's metrics for the base and the fine-tuned model in result.json, and
on the run page, for each family."""

from __future__ import annotations

import json

import jsonschema
from click.testing import CliRunner
from helpers import every_family

from dreambooth_job.cli import main
from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module


@every_family
def test_train_evaluate_fills_result_json(tmp_path, photo_dir, family_model, tiny_dino_dir, tiny_clip_dir):
    output = tmp_path / "run"
    outcome = CliRunner().invoke(main, [
        "train", "--instance-data", str(photo_dir), "--class-noun", "dog", "--output", str(output),
        "--base-model", str(family_model.path), "--cache-dir", str(tmp_path / "cache"),
        "--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation",
        "--sample-steps", "2", "--num-validation-images", "1", "--metrics-port", "0",
        "--evaluate", "--eval-max-prompts", "2", "--images-per-prompt", "2",
        "--eval-class-images", "2", "--dino-model", str(tiny_dino_dir),
        "--clip-model", str(tiny_clip_dir)], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output
    result = json.loads((output / "result.json").read_text())
    jsonschema.validate(result, result_module.schema())
    assert result["base_model"]["family"] == family_model.family
    metrics = result["metrics"]
    assert set(metrics) == {"base", "finetuned", "protocol"}
    for row in ("base", "finetuned"):
        for name in ("dino", "clip_i", "clip_t", "pres"):
            assert isinstance(metrics[row][name], float), (row, name)
        assert metrics[row]["div"] is None and "div" in metrics[row]["unavailable"]
    assert metrics["protocol"]["images_per_prompt"] == 2
    assert "evaluate" in result["durations_seconds"]
    page = (output / "index.html").read_text()  # the run page shows both rows
    assert "Evaluation against the base model" in page
    assert f"<tr><th>family</th><td>{family_model.family}</td></tr>" in page
    assert (f"<td>dino</td><td class='num'>{metrics['base']['dino']:.4f}</td>"
            f"<td class='num'>{metrics['finetuned']['dino']:.4f}</td>") in page


def test_evaluation_scores_reach_the_observer(tmp_path, photo_dir, tiny_pipeline_dir, tiny_dino_dir,
                                               tiny_clip_dir, eval_config):
    from dreambooth_job import job

    seen: dict = {}

    class Recorder(JobObserver):
        def evaluation(self, metrics):
            seen.update(metrics)

    config = eval_config(instance_data=str(photo_dir), class_noun="dog", output=str(tmp_path / "o"),
                         base_model=str(tiny_pipeline_dir), cache_dir=str(tmp_path / "cache"),
                         resolution=64, max_train_steps=1, prior_preservation=False, sample_steps=2,
                         num_validation_images=1, metrics_port=0, evaluate=True,
                         eval_max_prompts=1, images_per_prompt=1, eval_class_images=1)
    assert job.run(config, Recorder()) == ExitCode.OK
    assert isinstance(seen["dino"], float) and isinstance(seen["base_dino"], float)
