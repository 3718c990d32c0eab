"""`dreambooth-job demo`: DreamBooth learning a subject, before and after, on a machine with no
network and no GPU, through the real job.

    dreambooth-job demo                                  # the toy world's subject, about a minute
    dreambooth-job demo --train-mode lora                # the same with LoRA adapters
    dreambooth-job demo --base flow                      # on the FLUX.2 [klein]-shaped toy base
    dreambooth-job demo --photos DIR --class-noun dog    # your photos, tiny random model: noise

It starts a local S3 server (local directories if none is installed), uploads the subject's
photos, runs `train` through the production code path (`job.run`) and copies the outputs out of
the object store. By default the subject and the base model are the toy world's
(docs/toy-world.md): a small model that draws balls and boxes, and a two-coloured ball it has
never seen, trained with prior preservation exactly as the toy-world ablation trains it. Then the
base and the fine-tuned model draw the same prompts from the same seeds: the demo prints their
subject fidelity and writes the before/after picture. With --photos, the base model is a tiny
random one (no real weights are available offline), so that run shows only that the code path
works on your photos.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import click

from dreambooth_job.config.choices import IMAGE_SUFFIXES
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.devtools import s3server, tiny_models
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.toyworld.bases import DEFAULT_TOY_BASE

BUCKET = "demo"
TOY_SUBJECT = "toy-ball"
TOY_SEED = 0
PHOTOS_SUBJECT = "my-subject"
PICTURE = "before-after.png"
RECORD = "before-after.json"
NOISE = ("The base model here is a tiny random one (no real weights offline): its pictures are "
         "noise by design. This run shows the job's code path on your photos, not what it learns.")


def sample_photos_dir() -> Path:
    """The bundled bear_plushie photos (CC-BY-4.0), for benchmarks."""
    return Path(str(resources.files("dreambooth_job").joinpath("assets", "sample_photos",
                                                               "bear_plushie")))


def run_demo(output: str, *, train_mode: str = "full", photos: str | None = None,
             class_noun: str | None = None, max_train_steps: int | None = None,
             metrics_port: int = 9090, base: str = DEFAULT_TOY_BASE) -> ExitCode:
    """The toy world's demo, or with `photos` and `class_noun` the tiny-model run on them."""
    if (photos is None) != (class_noun is None):
        raise InvalidInputError("--photos and --class-noun go together: give both (your photos) "
                                "or neither (the toy world's subject)")
    root = Path(output).resolve()
    if photos is None:
        _toy_demo(root, train_mode, max_train_steps, metrics_port, base)
    else:
        files = user_photo_files(Path(photos))
        config = _photos_config(root, store_root(root), class_noun, train_mode,
                                max_train_steps or 20, metrics_port)
        config.validate(require_inputs=True)  # before the model, the server or any upload
        _tiny_model(Path(config.base_model))
        _report(config.output, _train(root, config, files))
        click.echo(NOISE)
    return ExitCode.OK


def _toy_demo(root: Path, train_mode: str, max_train_steps: int | None, metrics_port: int,
              base: str) -> None:
    from dreambooth_job.toyworld import experiment  # deferred: experiment imports PIL

    ablation = experiment.Ablation(output=root, base=base, seeds=[TOY_SEED], train_mode=train_mode)
    if max_train_steps is not None:
        ablation.max_train_steps = max_train_steps
    config = _toy_config(ablation, store_root(root), metrics_port)
    config.validate(require_inputs=True)
    subject = experiment.write_subject(root / "subject", ablation.photos)
    click.echo(f"the toy world's subject: {ablation.photos} photos in {subject}")
    run_dir = _train(root, config, sorted(subject.iterdir()))
    _report(config.output, run_dir)
    with one_torch_thread():
        _before_after(ablation, root, run_dir)


def _train(root: Path, config: TrainConfig, photos: list[Path]) -> Path:
    """Upload the photos to config.instance_data in the demo's store, run the job, and return
    where its outputs can be read on this machine."""
    from dreambooth_job import job  # deferred: job imports PIL

    with one_torch_thread(), object_store(root):
        for path in photos:
            storage.upload_file(path, storage.join(config.instance_data, path.name))
        job.run(config)  # raises a JobError (its exit code) on failure
        if not storage.is_s3(config.output):
            return Path(config.output)
        # The server stops with the demo: keep a copy of what the job wrote (this run's only).
        local_copy = root / "run"
        shutil.rmtree(local_copy, ignore_errors=True)
        storage.download_dir(config.output, local_copy)
        return local_copy


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one CPU thread while the demo runs. Its models are tiny (a 32 px batch of two):
    a second thread has little to share and spin-waits for it. On the 2-core machine with other
    jobs running, the toy's 500 steps took 20 s on one thread and 10 minutes on two."""
    import torch  # deferred: torch is heavy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def user_photo_files(directory: Path) -> list[Path]:
    """The image files directly in `directory` (no symlinks, as the job reads local folders)."""
    if not directory.is_dir():
        raise InvalidInputError(f"--photos {directory}: not a directory")
    files = sorted(p for p in directory.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink())
    if not files:
        raise InvalidInputError(f"--photos {directory}: no photos in it "
                                f"({', '.join(IMAGE_SUFFIXES)} files)")
    return files


def store_root(root: Path) -> str:
    """Where the job reads and writes: a bucket on a local S3 server, or a local directory when
    no server is installed."""
    return f"s3://{BUCKET}/" if s3server.available() else str(root / "store")


@contextlib.contextmanager
def object_store(root: Path) -> Iterator[None]:
    """Serve store_root(root) while the demo runs: start the local S3 server and point boto3
    (and the job) at it, or start from an empty local directory."""
    store = store_root(root)
    if not storage.is_s3(store):
        click.echo("no local S3 server installed: using local directories instead")
        # Fresh each run, like the server's: a complete earlier run there would be kept as is.
        shutil.rmtree(store, ignore_errors=True)
        yield
        return
    saved = dict(os.environ)
    with s3server.LocalS3Server(root / "s3-data") as server:
        try:
            os.environ.update(server.client_env())
            s3_client.reset_client()
            s3_client.s3_client().create_bucket(Bucket=BUCKET)
            click.echo(f"local S3 ({server.kind}) at {server.endpoint}")
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            s3_client.reset_client()


def _toy_config(ablation, store: str, metrics_port: int) -> TrainConfig:
    """The ablation's run with prior preservation (experiment.train_config), on the store."""
    from dreambooth_job.toyworld import experiment  # deferred: experiment imports PIL

    config = experiment.train_config(ablation, TOY_SEED, True,
                                     storage.join(store, "photos", TOY_SUBJECT) + "/",
                                     storage.join(store, "runs", TOY_SUBJECT) + "/")
    # The store holds the class images too, and the job runs as `train` does: metrics served,
    # the default log format (a progress bar on a terminal).
    return replace(config, class_data=storage.join(store, "class-cache") + "/",
                   metrics_port=metrics_port, log_format=TrainConfig().log_format)


def _photos_config(root: Path, store: str, class_noun: str, train_mode: str,
                   max_train_steps: int, metrics_port: int) -> TrainConfig:
    """Your photos on the tiny random model (built once in <output>/tiny-model)."""
    return TrainConfig(
        instance_data=storage.join(store, "photos", PHOTOS_SUBJECT) + "/",
        output=storage.join(store, "runs", PHOTOS_SUBJECT) + "/",
        class_data=storage.join(store, "class-cache") + "/", class_noun=class_noun,
        base_model=str(root / "tiny-model"), resolution=64, num_class_images=8,
        max_train_steps=max_train_steps, num_validation_images=2, sample_steps=10, log_every=5,
        cache_dir=str(root / "cache"), metrics_port=metrics_port,
        checkpoint_every=max(1, max_train_steps // 2), train_mode=train_mode)


def _tiny_model(model_dir: Path) -> None:
    if not (model_dir / "model_index.json").exists():
        click.echo(f"building a tiny random model in {model_dir}")
        tiny_models.build_tiny_pipeline(model_dir)


def _before_after(ablation, root: Path, run_dir: Path) -> None:
    """Measure the base and the fine-tuned model; write and print the evidence."""
    from dreambooth_job.toyworld import before_after, measure  # deferred: before_after imports PIL

    token = json.loads((run_dir / "result.json").read_text())["identifier"]["token"]
    click.echo("measuring the base and the fine-tuned model on the same prompts and seeds")
    before, after, figure = before_after.compare(ablation, run_dir, token)
    figure.save(root / PICTURE)
    prompts = measure.subject_prompts(token)
    (root / RECORD).write_text(json.dumps({
        "identifier": token, "base": ablation.base, "train_mode": ablation.train_mode,
        "steps": ablation.max_train_steps,
        "rows": [prompts[key] for key in before_after.ROWS],
        "columns": list(before_after.COLUMNS), "layout": asdict(before_after.Layout()),
        "before": before, "after": after}, indent=2) + "\n")
    click.echo(f"subject fidelity ({before_after.EVAL_SIZE.subject_images} pictures of "
               f"\"{prompts['subject']}\"): base {before['subject_fidelity']:.2f} -> "
               f"fine-tuned {after['subject_fidelity']:.2f}")
    click.echo(f"class leakage (\"{prompts['class']}\" drawn like the subject; lower is better): "
               f"base {before['class_leakage']:.2f} -> fine-tuned {after['class_leakage']:.2f}")
    click.echo(f"before/after picture: {root / PICTURE}")


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
    click.echo(f"  run page            {local_copy / 'index.html'}")
