"""`dreambooth-job demo`: the real job, end to end, on a machine with no network and no GPU.

It starts a local S3 server (or falls back to local directories), uploads the bundled sample photos,
builds a tiny random Stable-Diffusion-shaped model, runs `train` through the same code path as
production, and copies the outputs out of the object store so you can look at them. A smoke run of
the real code path: the tiny model has random weights, so its pictures are noise.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import click

from dreambooth_job import storage
from dreambooth_job.config import TrainConfig
from dreambooth_job.devtools import s3server
from dreambooth_job.exit_codes import ExitCode

SUBJECT = "bear_plushie"
CLASS_NOUN = "stuffed animal"
BUCKET = "demo"


def sample_photos_dir() -> Path:
    return Path(str(resources.files("dreambooth_job").joinpath("assets", "sample_photos", SUBJECT)))


def run_demo(output: str, max_train_steps: int = 20, metrics_port: int = 9090,
             train_mode: str = "full") -> ExitCode:
    from dreambooth_job import job
    from dreambooth_job.devtools import tiny_models

    root = Path(output).resolve()
    model_dir = root / "tiny-model"
    if not (model_dir / "model_index.json").exists():
        click.echo(f"building a tiny random model in {model_dir}")
        tiny_models.build_tiny_pipeline(model_dir)
    settings = dict(class_noun=CLASS_NOUN, base_model=str(model_dir), resolution=64,
                    num_class_images=8, max_train_steps=max_train_steps, num_validation_images=2,
                    sample_steps=10, log_every=5, cache_dir=str(root / "cache"),
                    metrics_port=metrics_port, checkpoint_every=max(1, max_train_steps // 2),
                    train_mode=train_mode)
    if not s3server.available():
        click.echo("no local S3 server installed: using local directories instead")
        config = TrainConfig(instance_data=str(sample_photos_dir()), output=str(root / "run"),
                             class_data=str(root / "class-cache"), **settings)
        code = job.run(config)
        _report(str(root / "run"), root / "run")
        return code

    with s3server.LocalS3Server(root / "s3-data") as server:
        os.environ.update(server.client_env())
        storage.reset_client()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        photos = f"s3://{BUCKET}/photos/{SUBJECT}/"
        storage.upload_dir(sample_photos_dir(), photos)
        run_uri = f"s3://{BUCKET}/runs/{SUBJECT}/"
        click.echo(f"local S3 ({server.kind}) at {server.endpoint}; photos in {photos}")
        config = TrainConfig(instance_data=photos, output=run_uri,
                             class_data=f"s3://{BUCKET}/class-cache/", **settings)
        code = job.run(config)
        # The server stops with the demo: keep a copy of what the job wrote.
        copy = root / "run"
        storage.download_dir(run_uri, copy)
    _report(run_uri, copy)
    return code


def _report(run_uri: str, local_copy: Path) -> None:
    click.echo("demo finished")
    click.echo(f"  outputs written to  {run_uri}")
    click.echo(f"  local copy          {local_copy}")
    # A full run publishes model/, a LoRA run lora/ (and model/ with --lora-merge).
    for name, what in (("model", "model"), ("lora", "LoRA adapters")):
        if (local_copy / name).is_dir():
            click.echo(f"  {what:<19} {local_copy / name}")
    click.echo(f"  sample grids        {local_copy / 'samples'}")
    click.echo(f"  result.json         {local_copy / 'result.json'}")
    click.echo("This was a smoke run of the real code path on a tiny random model: "
               "its pictures are noise by design.")
