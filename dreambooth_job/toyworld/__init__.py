"""A toy world in which DreamBooth's effects can be measured on CPU (docs/toy-world.md):
world.py draws it, latent.py is its lossless VAE, base.py trains the shipped base model,
features.py and measure.py score pictures, experiment.py and command.py run the ablation,
before_after.py measures and pictures the `demo` (devtools/demo.py)."""
