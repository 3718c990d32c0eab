"""`train --train-mode lora --evaluate`: the fine-tuned row samples base + adapters, for each family."""

from __future__ import annotations

import json

from helpers import every_family

from dreambooth_job.events import JobObserver
from dreambooth_job.exit_codes import ExitCode


@every_family
def test_the_finetuned_row_is_the_adapted_model(tmp_path, photo_dir, family_model, eval_config):
    from dreambooth_job import job

    seen: dict = {}

    class Recorder(JobObserver):
        def evaluation(self, metrics):
            seen.update(metrics)

    output = tmp_path / "run"
    config = eval_config(instance_data=str(photo_dir), class_noun="dog", output=str(output),
                         base_model=str(family_model.path), resolution=64, max_train_steps=2,
                         train_mode="lora", learning_rate=5e-2, prior_preservation=False,
                         sample_steps=2, num_validation_images=1, metrics_port=0, evaluate=True,
                         eval_max_prompts=1, images_per_prompt=1, eval_class_images=1)
    assert job.run(config, Recorder()) == ExitCode.OK
    metrics = json.loads((output / "result.json").read_text())["metrics"]
    # Both rows sample the same seeds: with the adapters ignored they would be equal.
    assert metrics["finetuned"]["dino"] != metrics["base"]["dino"]
    assert metrics["finetuned"]["clip_t"] != metrics["base"]["clip_t"]
    assert seen["dino"] == metrics["finetuned"]["dino"] and seen["base_dino"] == metrics["base"]["dino"]
