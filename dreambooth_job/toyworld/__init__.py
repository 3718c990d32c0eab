"""A toy world in which DreamBooth's effects can be measured on CPU (docs/toy-world.md):
world.py draws it, latent.py is its lossless VAE, base.py trains the shipped Stable Diffusion-shaped
base model and flow_base.py the FLUX.2 [klein]-shaped flow-matching one (bases.py names both),
features.py and measure.py score pictures, experiment.py and command.py run the ablation,
before_after.py measures and pictures the `demo` (devtools/demo.py)."""
