"""dreambooth-job: personalize Stable Diffusion with DreamBooth, one Kubernetes Job per subject."""

__version__ = "0.1.0"
