"""`dreambooth-job generate` end to end: a tiny full run and a tiny LoRA run trained into the real
S3 server, then images drawn from them, written back to S3 and read as a user would."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_photo, upload_photos
from PIL import Image

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.generation.sampling import LABEL_WIDTH
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client

TRAIN = ["--resolution", "64", "--max-train-steps", "2", "--no-prior-preservation",
         "--sample-steps", "2", "--num-validation-images", "1", "--validation-prompt",
         "a {identifier} {class_noun}", "--metrics-port", "0", "--checkpoint-every", "0",
         "--log-format", "json", "--class-noun", "dog"]
DRAW = ["--steps", "2", "--log-format", "json"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(s3_server, tiny_model, tmp_path_factory):
    """A finished full run and a finished LoRA run (no --lora-merge: lora/ only), in one bucket."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.s3_client().create_bucket(Bucket=bucket)
    photos = tmp_path_factory.mktemp("photos")
    for i in range(2):
        make_photo(photos / f"{i}.jpg", seed=i)
    upload_photos(photos, f"s3://{bucket}/photos/dog/")
    cache = tmp_path_factory.mktemp("cache")
    found = {"bucket": bucket, "cache": str(cache)}
    for name, mode in (("full", ["--train-mode", "full"]),
                       ("lora", ["--train-mode", "lora", "--lora-rank", "4", "--learning-rate", "1e-2"])):
        output = f"s3://{bucket}/runs/{name}/"
        outcome = invoke("train", *TRAIN, *mode, "--instance-data", f"s3://{bucket}/photos/dog/",
                         "--base-model", tiny_model, "--output", output, "--cache-dir", cache)
        assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
        found[name] = output
    return found


def generate(runs, model: str, output: str, *extra: str):
    return invoke("generate", "--model", model, "--output", f"s3://{runs['bucket']}/{output}/",
                  "--cache-dir", runs["cache"], *DRAW, *extra)


def png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB"))


def record_of(runs, output: str) -> dict:
    return json.loads(storage.read_bytes(f"s3://{runs['bucket']}/{output}/generation.json"))


def test_generate_from_a_full_run_writes_images_grid_and_record(runs):
    outcome = generate(runs, runs["full"], "gen/full", "--prompt", "a {identifier} {class_noun} on the moon",
                       "--prompt", "a {class_noun}", "--num-images", "2", "--seed", "5",
                       "--batch-size", "3")
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    prefix = f"s3://{runs['bucket']}/gen/full/"
    names = sorted(f.relative_path for f in storage.list_files(prefix))
    assert names == ["generation.json", "grid.png", "prompt-00-seed-5.png", "prompt-00-seed-6.png",
                     "prompt-01-seed-5.png", "prompt-01-seed-6.png"]
    assert png(prefix + "prompt-00-seed-5.png").shape == (64, 64, 3)  # the run's resolution
    assert png(prefix + "grid.png").shape == (2 * 64, LABEL_WIDTH + 2 * 64, 3)

    # The placeholders are filled from the run's result.json; the record says what drew what.
    result = json.loads(storage.read_bytes(runs["full"] + "result.json"))
    token = result["identifier"]["token"]
    record = record_of(runs, "gen/full")
    assert [p["prompt"] for p in record["prompts"]] == [f"a {token} dog on the moon", "a dog"]
    assert record["prompts"][0]["template"] == "a {identifier} {class_noun} on the moon"
    assert record["weights"] == "model" and record["run"] == runs["full"].rstrip("/")
    assert record["seeds"] == [5, 6] and record["resolution"] == 64 and record["steps"] == 2
    assert record["sampler"] == "dpm-solver++"  # auto: the family's first, the grids' sampler
    assert [i["file"] for i in record["prompts"][1]["images"]] == ["prompt-01-seed-5.png",
                                                                  "prompt-01-seed-6.png"]
    assert f"wrote 4 image(s), grid.png and generation.json to {prefix}" in outcome.stdout


def test_the_same_seed_draws_the_same_image(runs):
    prompt = ["--prompt", "a {identifier} {class_noun} in the snow"]
    for output, seed in (("seed/a", "3"), ("seed/b", "3"), ("seed/c", "4")):
        outcome = generate(runs, runs["full"], output, *prompt, "--num-images", "1", "--seed", seed)
        assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    bucket = runs["bucket"]
    first = png(f"s3://{bucket}/seed/a/prompt-00-seed-3.png")
    assert np.array_equal(first, png(f"s3://{bucket}/seed/b/prompt-00-seed-3.png"))
    assert not np.array_equal(first, png(f"s3://{bucket}/seed/c/prompt-00-seed-4.png"))
    # The image of a seed does not depend on the images generated beside it.
    outcome = generate(runs, runs["full"], "seed/d", *prompt, "--num-images", "2", "--seed", "2",
                       "--batch-size", "2")
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    beside = png(f"s3://{bucket}/seed/d/prompt-00-seed-3.png").astype(int)
    assert np.abs(beside - first.astype(int)).max() <= 2  # batched matmuls round differently


def test_generate_from_a_lora_run_applies_the_adapters_to_the_recorded_base(runs, tiny_model):
    from dreambooth_job.generation.source import find_run, load_pipeline

    for model, output in ((runs["lora"], "gen/lora-run"), (runs["lora"] + "lora/", "gen/lora-dir")):
        outcome = generate(runs, model, output, "--num-images", "1", "--seed", "9")
        assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
        record = record_of(runs, output)
        assert record["weights"] == "lora" and record["base_model"] == str(tiny_model)
        assert record["prompts"][0]["prompt"] == f"a {record['identifier']} dog"
    bucket = runs["bucket"]
    assert np.array_equal(png(f"s3://{bucket}/gen/lora-run/prompt-00-seed-9.png"),
                          png(f"s3://{bucket}/gen/lora-dir/prompt-00-seed-9.png"))

    source = find_run(runs["lora"])
    assert source.weights == "lora" and source.base_model == str(tiny_model)
    pipeline = load_pipeline(source, runs["cache"])
    assert getattr(pipeline.unet, "peft_config", None), "the run's adapters are on the UNet"


def one_line_error(outcome) -> str:
    """The single stderr line of an exit-2 refusal of --model."""
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output[-3000:]
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --model "), outcome.stderr
    return lines[0]


@pytest.mark.parametrize("model, expected", [
    ("s3://{bucket}/nothing/", ["holds no finished run"]),
    ("s3://{bucket}/runs/full/samples/", ["holds no finished run"]),
    ("s3://{bucket}/photos/dog/", ["holds no finished run"]),
    ("s3://{bucket}/runs/full/lora/", ["published no lora/", "it published model/"]),
    ("s3://{bucket}/runs/lora/model/", ["published no model/", "it published lora/"]),
    ("{local}", ["holds no finished run"]),
])
def test_a_bad_model_prefix_exits_2_with_one_line(runs, tmp_path, model, expected):
    model = model.format(bucket=runs["bucket"], local=tmp_path / "absent")
    line = one_line_error(generate(runs, model, "gen/never"))
    assert all(text in line for text in (model, *expected)), line
    assert not storage.list_files(f"s3://{runs['bucket']}/gen/never/"), "nothing written"


@pytest.mark.parametrize("case, files, expected", [
    ("no-marker", {"result.json": {}}, "holds no finished run"),
    ("garbled", {"result.json": b"{not json", "_SUCCESS": b""}, "not valid JSON"),
    ("failed", {"result.json": {"status": "failed"}, "_SUCCESS": b""}, "did not succeed"),
    ("huge", {"result.json": {"training": {"resolution": 10**6}}, "_SUCCESS": b""},
     "the run records resolution 1000000"),
    # A tenant's file, read typed and bounded (issue 23): never a traceback, never a fallback.
    ("too-large", {"result.json": {"padding": "x" * 4 * 2**20}, "_SUCCESS": b""},
     "the run's result.json is over 4194304 bytes"),
    ("deep", {"result.json": b"[" * 200_000, "_SUCCESS": b""}, "not valid JSON"),
    ("list", {"result.json": b"[]", "_SUCCESS": b""}, "the run's result.json is not a JSON object"),
    ("config-list", {"result.json": {"config": ["dog"]}, "_SUCCESS": b""},
     "result.json is malformed: config is not an object"),
    ("long-token", {"result.json": {"identifier": {"token": "x" * 10_000}}, "_SUCCESS": b""},
     "malformed: identifier.token is not a string of at most 200 characters"),
])
def test_an_unfinished_or_unreadable_run_exits_2(runs, case, files, expected):
    """Copies of the full run with a file missing or changed (a dict: the full run's record with
    those keys replaced): no `_SUCCESS`, a result.json that is not JSON, a failed run, a recorded
    resolution no one could draw (result.json is a tenant's file)."""
    bucket = runs["bucket"]
    record = json.loads(storage.read_bytes(f"s3://{bucket}/runs/full/result.json"))
    for name, content in files.items():
        data = json.dumps({**record, **content}).encode() if isinstance(content, dict) else content
        storage.write_bytes(f"s3://{bucket}/copies/{case}/{name}", data)
    line = one_line_error(generate(runs, f"s3://{bucket}/copies/{case}/", "gen/never"))
    assert expected in line, line
    assert not storage.list_files(f"s3://{bucket}/gen/never/"), "nothing written"


def test_output_inside_the_runs_weights_is_refused(runs):
    outcome = invoke("generate", "--model", runs["lora"], "--output", runs["lora"] + "lora/gen/",
                     "--cache-dir", runs["cache"], *DRAW)
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    assert outcome.stderr.strip() == (f"error: --output {runs['lora']}lora/gen/ is inside the run's "
                                      "lora/: the images would change the run's published weights; "
                                      "write them elsewhere")
    assert not storage.list_files(runs["lora"] + "lora/gen/")


def test_generate_from_an_sdxl_lora_run_with_text_encoder_adapters(runs, tiny_sdxl_model):
    """SDXL: adapters on the UNet and both text encoders, applied to the recorded SDXL base."""
    output = f"s3://{runs['bucket']}/runs/sdxl-lora/"
    outcome = invoke("train", *TRAIN, "--train-mode", "lora", "--lora-rank", "4",
                     "--train-text-encoder", "--instance-data", f"s3://{runs['bucket']}/photos/dog/",
                     "--base-model", tiny_sdxl_model, "--output", output, "--cache-dir", runs["cache"])
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    outcome = generate(runs, output, "gen/sdxl", "--num-images", "2", "--sampler", "euler")
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = record_of(runs, "gen/sdxl")
    assert record["weights"] == "lora" and record["base_model"] == str(tiny_sdxl_model)
    assert png(f"s3://{runs['bucket']}/gen/sdxl/prompt-00-seed-1.png").shape == (64, 64, 3)
    from dreambooth_job.generation.source import find_run, load_pipeline

    pipeline = load_pipeline(find_run(output), runs["cache"])
    for module in (pipeline.unet, pipeline.text_encoder, pipeline.text_encoder_2):
        assert getattr(module, "peft_config", None), f"no adapters on the {type(module).__name__}"


# --- result.json is the tenant's file: what it names is checked, in the process that generates --

POLICY_ENV = "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES"


@pytest.fixture(scope="module")
def tenants(runs, tiny_model):
    """The tiny model in the shared models prefix and in tenant B's own prefix; tenant A's policy
    (its prefix and the models prefix), as an operator sets it for tenant A's pods."""
    bucket = runs["bucket"]
    for prefix in ("models/tiny", "tenant-b/victim/model"):
        storage.upload_dir(tiny_model, f"s3://{bucket}/{prefix}/")
    return {"bucket": bucket, "policy": f"s3://{bucket}/tenant-a/,s3://{bucket}/models/",
            "allowed_base": f"s3://{bucket}/models/tiny", "local_base": str(tiny_model),
            "victim": f"s3://{bucket}/tenant-b/victim/model"}


def copy_of_lora_run(runs, name: str, changes: dict) -> str:
    """The LoRA run copied whole into tenant A's prefix, its result.json's sections updated with
    `changes` (a section's fields merged; None removes the section), as the tenant can."""
    bucket = runs["bucket"]
    record = json.loads(storage.read_bytes(runs["lora"] + "result.json"))
    for section, fields in changes.items():
        record[section] = None if fields is None else {**(record.get(section) or {}), **fields}
    run = f"s3://{bucket}/tenant-a/{name}/"
    for file in storage.list_files(runs["lora"] + "lora/"):
        storage.write_bytes(f"{run}lora/{file.relative_path}",
                            storage.read_bytes(storage.file_uri(runs["lora"] + "lora/", file)))
    storage.write_bytes(run + "result.json", json.dumps(record).encode())
    storage.write_bytes(run + "_SUCCESS", b"")
    return run


@pytest.mark.parametrize("changes, field, expected", [
    ({"base_model": {"source": "{victim}"}}, "base_model.source {victim}", "outside the prefixes"),
    ({"base_model": None, "config": {"base_model": "{victim}"}}, "config.base_model {victim}",
     "outside the prefixes"),
    ({"base_model": {"source": "someorg/some-model"}}, "base_model.source 'someorg/some-model'",
     "is a hub id"),
    ({"base_model": {"source": "{local_base}"}}, "base_model.source {local_base}",
     "outside the prefixes"),
    ({"base_model": {"source": "{allowed_base}"}, "config": {"vae": "{victim}/vae"}},
     "config.vae {victim}/vae", "outside the prefixes"),
    ({"base_model": {"source": "https://example.com/model"}}, "base_model.source",
     "is not a supported location"),
    ({"base_model": {"source": "s3://key:secret@{bucket}/models/tiny"}}, "base_model.source",
     "must not carry credentials"),
], ids=["other-tenant", "older-field", "hub-id", "local-path", "vae", "scheme", "credentials"])
def test_a_forged_base_model_or_vae_in_result_json_exits_2(runs, tenants, monkeypatch, changes,
                                                           field, expected):
    """Issue 23: a LoRA run's result.json named another tenant's model, a hub id (the pod then
    reached for the hub: exit 75, retried), a path of the image or another tenant's VAE, and
    generate loaded it. Now each is refused before any download, in one line naming the field."""
    monkeypatch.setenv(POLICY_ENV, tenants["policy"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as a pod without the hub: never a download
    changes = {s: None if f is None else {k: v.format(**tenants) for k, v in f.items()}
               for s, f in changes.items()}
    run = copy_of_lora_run(runs, "bear", changes)
    line = one_line_error(generate(runs, run, "tenant-a/gen/forged"))
    assert f"result.json's {field.format(**tenants)}" in line and expected in line, line
    assert not storage.list_files(f"s3://{runs['bucket']}/tenant-a/gen/forged/"), "nothing written"


def test_a_lora_run_on_an_allowed_base_model_and_vae_still_generates(runs, tenants, monkeypatch):
    monkeypatch.setenv(POLICY_ENV, tenants["policy"])
    base = tenants["allowed_base"]
    run = copy_of_lora_run(runs, "honest", {"base_model": {"source": base},
                                            "config": {"vae": base + "/vae"}})
    outcome = generate(runs, run, "tenant-a/gen/honest", "--num-images", "1")
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    record = record_of(runs, "tenant-a/gen/honest")
    assert record["base_model"] == base and record["weights"] == "lora"


def test_generate_checks_model_and_output_against_the_policy_of_its_process(runs, tenants,
                                                                            monkeypatch):
    """The generate pod re-checks what submit-generate checked: --model and --output."""
    monkeypatch.setenv(POLICY_ENV, tenants["policy"])
    run = copy_of_lora_run(runs, "own", {"base_model": {"source": tenants["allowed_base"]}})
    outcome = generate(runs, run, "tenant-b/gen")
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output[-3000:]
    assert outcome.stderr.strip() == (f"error: --output s3://{runs['bucket']}/tenant-b/gen/ is "
                                      "outside the prefixes the operator allows "
                                      f"({POLICY_ENV})")
    assert not storage.list_files(f"s3://{runs['bucket']}/tenant-b/gen/")


@pytest.mark.parametrize("variant", ["lokr", "dora"])
def test_generate_from_a_lokr_or_dora_run_draws_what_the_job_trained(runs, tiny_model, variant,
                                                                    monkeypatch):
    """A run without --lora-merge publishes lora/ alone (a LoKr run only its LyCORIS file:
    diffusers' SD loader reads no LoKr); generate applies it to the recorded base. Its image is
    the one drawn from model/ of the same run with --lora-merge, the adapters merged in the job's
    own process, and far from the base model's image."""
    import importlib

    from dreambooth_job.training import base_models

    generation_run = importlib.import_module("dreambooth_job.generation.run")  # the package's
    # `run` attribute is another name

    bucket, runs_of = runs["bucket"], {}
    for merged in (False, True):
        runs_of[merged] = f"s3://{bucket}/runs/{variant}-{'merged' if merged else 'plain'}/"
        outcome = invoke("train", *TRAIN, "--train-mode", "lora", "--lora-variant", variant,
                         "--lora-rank", "4", "--learning-rate", "1e-1", "--save-precision", "fp32",
                         *(["--lora-merge"] if merged else []),
                         "--instance-data", f"s3://{bucket}/photos/dog/", "--base-model", tiny_model,
                         "--output", runs_of[merged], "--cache-dir", runs["cache"])
        assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    published = sorted(f.relative_path for f in storage.list_files(runs_of[False] + "lora/"))
    assert ("pytorch_lora_weights.safetensors" in published) == (variant == "dora")
    assert not storage.list_files(runs_of[False] + "model/")

    draws = {"plain": runs_of[False], "merged": runs_of[True] + "model/"}
    for name, model in draws.items():
        outcome = generate(runs, model, f"gen/{variant}-{name}", "--num-images", "1", "--seed", "9")
        assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]
    assert record_of(runs, f"gen/{variant}-plain")["weights"] == "lora"
    base = base_models.load_pipeline(base_models.resolve_base_model(str(tiny_model), runs["cache"]),
                                     runs["cache"])
    monkeypatch.setattr(generation_run, "load_pipeline", lambda source, cache_dir: base)
    outcome = generate(runs, runs_of[False], f"gen/{variant}-base", "--num-images", "1", "--seed", "9")
    assert outcome.exit_code == ExitCode.OK, outcome.output[-3000:]

    image = {name: png(f"s3://{bucket}/gen/{variant}-{name}/prompt-00-seed-9.png").astype(int)
             for name in ("plain", "merged", "base")}
    assert np.abs(image["plain"] - image["merged"]).max() <= 2  # merged weights round differently
    assert np.abs(image["plain"] - image["base"]).max() > 20, "the adapters change the image"
