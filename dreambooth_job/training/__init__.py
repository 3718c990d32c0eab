"""Training and what it uses: the subject's photos and class images, LoRA adapters, checkpoints,
memory estimates, progress, the device, the base models and the start-up checks."""
