"""End to end, the published weight files of a full fine-tuning run: saved in --save-precision (the
fp32 trained weights cast, training unchanged), the single file that `from_single_file` loads, and
result.json listing every file with the sha256 of what is in the bucket."""

from __future__ import annotations

import hashlib
import json

import jsonschema
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from helpers import upload_photos
from safetensors.torch import load_file

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs import result as result_module
from dreambooth_job.storage import places as storage

SMALL = ["--resolution", "64", "--max-train-steps", "3", "--num-class-images", "2",
         "--sample-steps", "2", "--num-validation-images", "1", "--log-every", "3",
         "--validation-prompt", "a {identifier} {class_noun}", "--learning-rate", "1e-3",
         "--metrics-port", "0", "--train-text-encoder"]
COMPONENTS = ("unet", "vae", "text_encoder")


def _train(args):
    return CliRunner().invoke(main, ["train", *SMALL, *args], catch_exceptions=False)


def _run(bucket, photos, tiny_model, tmp_path, name, *extra):
    run = f"s3://{bucket}/runs/{name}/"
    outcome = _train(["--instance-data", photos, "--class-noun", "dog", "--base-model", str(tiny_model),
                      "--output", run, "--class-data", f"s3://{bucket}/class-cache/",
                      "--cache-dir", str(tmp_path / "cache"), "--subject-id", "rex", *extra])
    assert outcome.exit_code == ExitCode.OK, outcome.output
    local = tmp_path / name
    storage.download_dir(run, local)
    return run, local, json.loads((local / "result.json").read_text())


def _weights(directory):
    files = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
    return {name: load_file(directory / name / f"{files[name]}.safetensors") for name in COMPONENTS}


def test_full_run_publishes_fp16_weights_equal_to_the_fp32_ones_cast_and_a_single_file(
        bucket, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    _, fp32_dir, fp32_result = _run(bucket, photos, tiny_model, tmp_path, "fp32", "--save-precision", "fp32")
    run, fp16_dir, result = _run(bucket, photos, tiny_model, tmp_path, "fp16", "--export-single-file")
    for record in (fp32_result, result):
        jsonschema.validate(record, result_module.schema())
    assert result["training"]["final_loss"] == fp32_result["training"]["final_loss"]  # training unchanged
    assert result["outputs"]["model"] == storage.join(run, "model") and "lora" not in result["outputs"]
    assert result["outputs"]["single_file"] == storage.join(run, "rex.safetensors")

    trained, saved = _weights(fp32_dir / "model"), _weights(fp16_dir / "model")
    for name in COMPONENTS:
        assert saved[name].keys() == trained[name].keys()
        for key, tensor in trained[name].items():
            assert tensor.dtype == torch.float32 and saved[name][key].dtype == torch.float16
            assert torch.equal(saved[name][key], tensor.to(torch.float16)), f"{name}.{key}"
    loaded = StableDiffusionPipeline.from_pretrained(fp16_dir / "model", torch_dtype=torch.float16)
    assert loaded.unet.dtype == torch.float16

    # The single file, read by diffusers' own reader with the base model's directory as config.
    single = StableDiffusionPipeline.from_single_file(
        str(fp16_dir / "rex.safetensors"), config=str(tiny_model), local_files_only=True,
        torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    for name in COMPONENTS:
        got = getattr(single, name).state_dict()
        for key, tensor in trained[name].items():
            assert torch.equal(got[key], tensor.to(torch.float16).to(torch.float32)), f"{name}.{key}"

    # Every published weight file listed, with the size and sha256 of what the bucket holds.
    listed = {f["path"]: f for f in result["outputs"]["files"]}
    assert "rex.safetensors" in listed and "model/unet/diffusion_pytorch_model.safetensors" in listed
    on_disk = {p.relative_to(fp16_dir).as_posix() for p in fp16_dir.rglob("*") if p.is_file()
               and p.relative_to(fp16_dir).parts[0] in ("model", "rex.safetensors")}
    assert set(listed) == on_disk
    for path, entry in listed.items():
        data = (fp16_dir / path).read_bytes()
        assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
