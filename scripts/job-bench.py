#!/usr/bin/env python3
"""Whole-job wall time: `dreambooth-job train` from process start to exit, outputs in S3.

A local S3 server (SeaweedFS or moto, as in the demo) holds the subject photos (the bundled
sample photos), the base model and the outputs. Run 1 starts with an empty class-image cache and
generates the class images; run 2, on another output, finds them cached, as every later subject of
the same class does. Both runs share the node's base-model cache (`--cache-dir`), so run 2 is the
steady state of a batch night. Writes `$OUT/job-bench.json`.

    python scripts/job-bench.py --model sd15 --resolution 512 --steps 800 --out /tmp/job-bench
    python scripts/job-bench.py --model tiny --resolution 64 --steps 100 --class-images 20  # CPU

Extra arguments after `--` go to both `train` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dreambooth_job.bench import architectures
from dreambooth_job.devtools import demo, s3server, tiny_models
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client


def build_base_model(name: str, directory: Path) -> None:
    if name == "tiny":
        tiny_models.build_tiny_pipeline(directory)
    else:
        architectures.build_pipeline(name).save_pretrained(directory, safe_serialization=True)


def timed_train(args: list[str], log: Path) -> dict:
    started = time.time()
    with log.open("w") as sink:
        code = subprocess.call([sys.executable, "-m", "dreambooth_job.cli", "train", *args],
                               stdout=sink, stderr=subprocess.STDOUT)
    return {"exit_code": code, "wall_seconds": round(time.time() - started, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "sd15", "sd21"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--class-images", type=int, default=200)
    parser.add_argument("--fill-steps", type=int, help="Training steps of run 1 (default: --steps);"
                        " few when only its class images matter")
    parser.add_argument("--out", type=Path, default=Path("job-bench"))
    parser.add_argument("train_args", nargs="*")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="job-bench-"))

    with s3server.LocalS3Server(work / "s3") as server:
        os.environ.update(server.client_env())  # this process and the jobs it starts
        s3_client.s3_client().create_bucket(Bucket="bench")
        started = time.perf_counter()
        build_base_model(options.model, work / "base")
        storage.upload_dir(work / "base", "s3://bench/models/base/")
        storage.upload_dir(demo.sample_photos_dir(), "s3://bench/photos/subject/")
        prepared = time.perf_counter() - started

        common = ["--instance-data", "s3://bench/photos/subject/", "--class-noun", "teddy bear",
                  "--base-model", "s3://bench/models/base/", "--class-data", "s3://bench/class-cache/",
                  "--cache-dir", str(work / "cache"), "--resolution", str(options.resolution),
                  "--num-class-images", str(options.class_images), *options.train_args]
        runs = {}
        fill_steps = options.fill_steps or options.steps
        for name, steps in (("generate_class_images", fill_steps), ("class_images_cached", options.steps)):
            args = [*common, "--max-train-steps", str(steps), "--output", f"s3://bench/runs/{name}/"]
            runs[name] = timed_train(args, options.out / f"{name}.log")
            result_uri = f"s3://bench/runs/{name}/result.json"
            result = json.loads(storage.read_bytes(result_uri)) if storage.exists(result_uri) else {}
            runs[name]["phase_seconds"] = result.get("durations_seconds")
            runs[name]["train"] = result.get("train")
            runs[name]["outputs"] = len(storage.list_files(f"s3://bench/runs/{name}/"))

    report = {"model": options.model, "resolution": options.resolution, "steps": options.steps,
              "fill_steps": fill_steps, "train_args": options.train_args,
              "class_images": options.class_images, "s3_server": server.kind,
              "prepare_seconds": round(prepared, 2), "runs": runs}
    (options.out / "job-bench.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: {"exit_code": v["exit_code"], "wall_seconds": v["wall_seconds"],
                          "phase_seconds": v["phase_seconds"]} for k, v in runs.items()}, indent=2))
    return max(run["exit_code"] for run in runs.values())


if __name__ == "__main__":
    sys.exit(main())
