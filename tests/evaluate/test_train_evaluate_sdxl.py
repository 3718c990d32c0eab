"""`train --evaluate` on an SDXL base: the protocol samples the SDXL pipeline (both encoders,
size-conditioned) for the fine-tuned row, base + adapters, and the reloaded base for the other."""

from __future__ import annotations

import json

import jsonschema

from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module


def test_sdxl_lora_run_with_evaluate_scores_both_rows(tmp_path, photo_dir, tiny_sdxl_model, eval_config):
    from dreambooth_job import job

    seen: dict = {}

    class Recorder(JobObserver):
        def evaluation(self, metrics):
            seen.update(metrics)

    output = tmp_path / "run"
    config = eval_config(instance_data=str(photo_dir), output=str(output), base_model=str(tiny_sdxl_model),
                         resolution=64, max_train_steps=2, train_mode="lora", train_text_encoder=True,
                         learning_rate=5e-2, prior_preservation=False, num_validation_images=1,
                         metrics_port=0, evaluate=True)
    assert job.run(config, Recorder()) == ExitCode.OK
    result = json.loads((output / "result.json").read_text())
    jsonschema.validate(result, result_module.schema())
    metrics = result["metrics"]
    for row in ("base", "finetuned"):
        for name in ("dino", "clip_i", "clip_t", "pres"):
            assert isinstance(metrics[row][name], float), (row, name)
    # Both rows sample the same seeds: with the adapters ignored they would be equal.
    assert metrics["finetuned"]["dino"] != metrics["base"]["dino"]
    assert seen["dino"] == metrics["finetuned"]["dino"] and seen["base_dino"] == metrics["base"]["dino"]
