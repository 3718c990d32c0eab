"""What a checkpoint holds training up for: the upload inline against in the background.

    OMP_NUM_THREADS=1 python scripts/checkpoint-bench.py WORK_DIR [--model sd15] [--rounds 2]

Builds the architecture with random weights (bench_models), trains one step at 64 px so that
AdamW's state exists, starts a local S3 server (s3server.py), then, alternating, per round: save
the trainer state, upload it as a checkpoint (CheckpointStore.save) either inline or through
checkpoint.BackgroundUploads, train two more steps, and wait for the upload. Prints each part's
wall time, then deletes what it wrote under WORK_DIR (for SD 1.5, 10 GB per copy of the state).
Results: docs/benchmarks.md ("What a checkpoint costs").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth_job.bench import architectures
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.devtools.s3server import LocalS3Server
from dreambooth_job.storage import s3_client
from dreambooth_job.training.checkpoint import BackgroundUploads, CheckpointStore
from dreambooth_job.training.trainer import Trainer

STEPS_AFTER_CHECKPOINT = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", default="sd15", choices=[a for a in architectures.ARCHITECTURES
                                                            if a not in architectures.UNSUPPORTED])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    pipeline = architectures.build_pipeline(args.model, seed=0)
    images = [Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype("uint8"))
              for i in range(2)]
    config = TrainConfig(instance_data="bench", class_noun="dog", output="bench", resolution=64,
                         max_train_steps=1, num_class_images=2, metrics_port=0)
    trainer = Trainer(config, pipeline, instance_images=images, instance_prompt="a sks dog",
                      class_images=images, class_prompt="a dog")
    trainer.setup()
    trainer.train()

    try:
        compare(trainer, args.work, args.rounds)
    finally:
        shutil.rmtree(args.work / "state", ignore_errors=True)
        shutil.rmtree(args.work / "s3", ignore_errors=True)
        (args.work / "s3.log").unlink(missing_ok=True)  # the server's log, beside its data


def compare(trainer: Trainer, work: Path, rounds: int) -> None:
    with LocalS3Server(work / "s3") as server:
        os.environ.update(server.client_env())
        s3_client.reset_client()
        s3_client.s3_client().create_bucket(Bucket="checkpoints")
        store = CheckpointStore("s3://checkpoints/bench", keep=1)
        for mode in ("inline", "background") * rounds:
            state, step = work / "state", trainer.step
            started = time.perf_counter()
            trainer.save_state(state)
            saved = time.perf_counter()
            uploads = BackgroundUploads()
            if mode == "inline":
                store.save(state, step, {}, "sks")
            else:
                uploads.submit(functools.partial(store.save, state, step, {}, "sks"))
            resumed = time.perf_counter()
            trainer.config = dataclasses.replace(
                trainer.config, max_train_steps=step + STEPS_AFTER_CHECKPOINT)
            trainer.train()
            trained = time.perf_counter()
            uploads.wait()
            done = time.perf_counter()
            uploads.close()
            print(f"{mode}: save_state {saved - started:.1f} s, training blocked by the upload "
                  f"{resumed - saved:.1f} s, {STEPS_AFTER_CHECKPOINT} steps {trained - resumed:.1f} s, "
                  f"waiting for the upload after them {done - trained:.1f} s, total {done - started:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
