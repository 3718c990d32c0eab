"""Training: the recipe a `train` job runs once its inputs are ready (phases/training.py calls it).

    trainer = Trainer(config, pipeline, instance_images=..., instance_prompt=...,
                      class_images=..., class_prompt=...)     # training/trainer.py
    trainer.setup()                 # setup.py: runtime, models, inputs (inputs.py, encoding.py), optimizer
    trainer.train()                 # the loop; loss(step) is one step's objective
    trainer.save_state(directory)   # state.py: what a checkpoint holds
    pipeline = trainer.inference_pipeline()

| module | what |
|---|---|
| trainer.py | `Trainer`: setup -> train -> save, the loop reading top to bottom |
| setup.py | the set-up steps, each returning its typed state (`Runtime`, `TrainedModels`) |
| inputs.py | what a step trains on: pixels, crops, geometry, latents, prompt embeddings |
| encoding.py | the frozen VAE and text encoders, and the --cache-latents cache |
| batches.py | the draws of (seed, step): images, flips, random crops |
| state.py | checkpoints: trainable-only for LoRA, forged states refused |
"""
