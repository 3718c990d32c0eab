"""Fixtures of the evaluation tests: tiny random evaluator models saved the way real ones are
(`save_pretrained` directories with their image processors and tokenizer), the tiny SD pipeline,
and small photo sets. Nothing here reaches the network: the hub is forced offline.
"""

from __future__ import annotations

import pytest
from helpers import random_image

from dreambooth_job.config.train_config import TrainConfig

SIZE = 32


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """Hub ids fail at once instead of after connection retries (the flag is read at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    from dreambooth_job.devtools.tiny_models import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        tiny_pipeline_dir, safety_checker=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory):
    """A ViT shaped like DINO ViT-S/16 but tiny: 16 px patches on 32 px inputs, 2 layers."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    path = tmp_path_factory.mktemp("tiny-dino")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=SIZE, patch_size=16, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64),
             add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from dreambooth_job.devtools.tiny_models import clip_tokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
                     "pad_token_id": 49407},
        vision_config={"image_size": SIZE, "patch_size": 16, "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": SIZE},
                          crop_size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lpips_dir(tmp_path_factory):
    """Random LPIPS weights in the upstream layouts (torchvision AlexNet, lpips linear layers)."""
    import torch

    from dreambooth_job.evaluation.lpips import BACKBONE_FILE, LINEAR_FILE, LPIPS

    path = tmp_path_factory.mktemp("tiny-lpips")
    torch.manual_seed(0)
    model = LPIPS()
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}
               | {"classifier.1.weight": torch.zeros(1)}, path / BACKBONE_FILE)
    torch.save({f"lin{i}.model.1.weight": layer.weight.detach().abs()
                for i, layer in enumerate(model.linear)}, path / LINEAR_FILE)
    return path




@pytest.fixture
def photos():
    return [random_image(i) for i in range(3)]


@pytest.fixture
def eval_config(tmp_path, tiny_dino_dir, tiny_clip_dir):
    """The smallest protocol that still has every metric: 2 prompts x 2 images, 2 PRES images."""

    def make(**overrides) -> TrainConfig:
        values = {
            "class_noun": "dog", "dino_model": str(tiny_dino_dir), "clip_model": str(tiny_clip_dir),
            "cache_dir": str(tmp_path / "cache"), "resolution": SIZE, "sample_steps": 2,
            "images_per_prompt": 2, "eval_max_prompts": 2, "eval_class_images": 2,
            "sample_batch_size": 4}
        return TrainConfig(**{**values, **overrides})

    return make
