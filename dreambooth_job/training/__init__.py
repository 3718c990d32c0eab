"""Training: the recipe a `train` job runs once its inputs are ready (phases/fine_tune.py calls
it), and what it uses: the subject's photos and class images, LoRA adapters, checkpoints, memory
estimates and sizing, progress, the device, the base models and the start-up checks.

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
| training/checkpoint.py | checkpoints in the output prefix: upload, list, resume, keep the last N |
| subject_photos.py, prior_images.py | the subject's photos; class images and their cache |
| lora_adapters.py | peft adapters on the denoiser and the text encoders |
| base_models.py | the base model: hub id, directory or S3 prefix, through the model cache |
| memory_estimate.py, training/sizing.py | what a step holds on the device; the pod's sizing profiles |
| sized_model.py | the family and size `--sizing auto` reads from a local or s3:// base model |
| devices.py, progress.py, preflight.py | the device and precision; progress lines; start-up checks |
"""
