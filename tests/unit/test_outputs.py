"""The output writer (dreambooth_job/outputs/weight_files.py): what a trained pipeline publishes
is decided by the pipeline itself (adapters or not), every file is listed with its size and
sha256, and each loads with the call the user guide gives for it (docs/user-guide.md, "Output layout")."""

from __future__ import annotations

import copy
import hashlib
import json

import jsonschema
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from helpers import perturb_lora_adapters  # noqa: E402

from dreambooth_job.config.train_config import TrainConfig  # noqa: E402
from dreambooth_job.outputs import result as result_module  # noqa: E402
from dreambooth_job.outputs import weight_files  # noqa: E402
from dreambooth_job.phases.context import new_result  # noqa: E402
from dreambooth_job.training import lora_adapters  # noqa: E402

RANK, ALPHA = 4, 8
METADATA = weight_files.header_metadata(base_fingerprint="ab" * 32, identifier="sks", class_noun="dog",
                                        steps=40, subject_id="rex", precision="fp16", version="0.0.0")


def _load(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)




@torch.no_grad()
def _unet_out(unet):
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 32, 32, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    return unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


@torch.no_grad()
def _text_out(text_encoder):
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(8))
    return text_encoder(ids)[0]


@pytest.fixture
def adapted(tiny_model):
    """The tiny pipeline with perturbed LoRA adapters on UNet and text encoder, as training leaves it."""
    torch.manual_seed(0)
    pipe = _load(tiny_model)
    lora_adapters.add_lora(pipe.unet, pipe.text_encoder, rank=RANK, alpha=ALPHA)
    perturb_lora_adapters(pipe.unet, pipe.text_encoder)
    return pipe


def _settings(**overrides):
    return weight_files.OutputSettings(**{"subject_id": "rex", "metadata": METADATA, **overrides})


def _hash(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_adapted_unet_publishes_lora_files_only_listed_with_size_and_sha256(adapted, tiny_model, tmp_path):
    written = weight_files.write_outputs(adapted, tmp_path, _settings())
    assert written.lora == ["lora/pytorch_lora_weights.safetensors", "lora/rex.safetensors"]
    assert not written.model and written.single_file is None
    assert not (tmp_path / "model").exists()
    assert [f.path for f in written.files] == written.lora  # nothing else, no partial file
    unet_bytes = sum(p.numel() * 4 for p in _load(tiny_model).unet.parameters())
    for entry in written.files:
        path = tmp_path / entry.path
        assert (entry.size, entry.sha256) == (path.stat().st_size, _hash(path))
        print(f"{entry.path}: {entry.size} bytes (tiny UNet fp32: {unet_bytes} bytes)")
        assert entry.size < unet_bytes / 10
        with safetensors_torch.safe_open(path, framework="pt") as f:
            header, dtypes = f.metadata(), {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
        assert {k: header[k] for k in METADATA} == METADATA
        assert (header["lora_rank"], header["lora_alpha"]) == (str(RANK), str(ALPHA))
        assert dtypes == {torch.float16}  # the default --save-precision, alpha tensors included
    kohya = safetensors_torch.load_file(tmp_path / "lora" / "rex.safetensors")
    assert any(k.startswith("lora_te_") for k in kohya) and any(k.startswith("lora_unet_") for k in kohya)
    assert all(v.item() == ALPHA for k, v in kohya.items() if k.endswith(".alpha"))


def test_the_diffusers_lora_file_loads_on_the_base_with_load_lora_weights(tiny_model, tmp_path):
    """The user guide's call, on a UNet-only adapter (training without --train-text-encoder)."""
    pipe = _load(tiny_model)
    lora_adapters.add_lora(pipe.unet, rank=RANK, alpha=ALPHA)
    perturb_lora_adapters(pipe.unet)
    written = weight_files.write_outputs(pipe, tmp_path, _settings(precision="fp32"))
    base = _load(tiny_model)
    base_out = _unet_out(base.unet)
    base.load_lora_weights(str(tmp_path / "lora"))
    loaded = _unet_out(base.unet)
    assert not torch.allclose(loaded, base_out, atol=1e-3)
    torch.testing.assert_close(loaded, _unet_out(pipe.unet), rtol=1e-4, atol=1e-5)
    assert not any(k.startswith("lora_te_") for k in safetensors_torch.load_file(tmp_path / written.lora[1]))


def test_lora_merge_writes_a_model_that_equals_base_plus_adapter_and_keeps_the_adapters(adapted, tmp_path):
    expected_unet, expected_text = _unet_out(adapted.unet), _text_out(adapted.text_encoder)
    written = weight_files.write_outputs(adapted, tmp_path, _settings(precision="fp32", lora_merge=True))
    assert written.model and len(written.lora) == 2
    assert {f.path for f in written.files} >= {"model/model_index.json",
                                               "model/unet/diffusion_pytorch_model.safetensors"}
    merged = _load(tmp_path / "model")
    assert not lora_adapters.has_lora(merged.unet) and not lora_adapters.has_lora(merged.text_encoder)
    torch.testing.assert_close(_unet_out(merged.unet), expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_text_out(merged.text_encoder), expected_text, rtol=1e-4, atol=1e-5)
    # The run evaluates base + adapter after the files are written: its pipeline still has them.
    assert lora_adapters.has_lora(adapted.unet) and lora_adapters.has_lora(adapted.text_encoder)
    torch.testing.assert_close(_unet_out(adapted.unet), expected_unet)


def test_lora_merge_in_fp16_holds_the_merged_fp32_weights_cast(adapted, tmp_path):
    merged_fp32 = lora_adapters.merge_lora(copy.deepcopy(adapted.unet)).state_dict()
    weight_files.write_outputs(adapted, tmp_path, _settings(lora_merge=True))
    saved = safetensors_torch.load_file(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert saved.keys() == merged_fp32.keys()
    for key, tensor in saved.items():
        assert tensor.dtype == torch.float16 and torch.equal(tensor, merged_fp32[key].to(torch.float16)), key


def test_a_plain_unet_publishes_the_full_pipeline(tiny_model, tmp_path):
    pipe = _load(tiny_model)
    written = weight_files.write_outputs(pipe, tmp_path, _settings(precision="bf16"))
    assert written.model and not written.lora and not (tmp_path / "lora").exists()
    saved = safetensors_torch.load_file(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    for key, tensor in pipe.unet.state_dict().items():
        assert torch.equal(saved[key], tensor.to(torch.bfloat16)), key
    assert all((f.size, f.sha256) == ((tmp_path / f.path).stat().st_size, _hash(tmp_path / f.path))
               for f in written.files)


@pytest.mark.parametrize("subject_id, name", [
    ("rex", "rex.safetensors"), ("../../etc/x", "etc-x.safetensors"), ("a/b", "a-b.safetensors"),
    ("..", "subject.safetensors"), (".hidden", "hidden.safetensors")])
def test_the_file_name_from_a_tenants_subject_id_stays_a_plain_name(subject_id, name):
    assert weight_files.single_file_name(subject_id) == name


def test_recorded_lora_outputs_validate_against_the_schema_without_a_model(adapted, tmp_path):
    written = weight_files.write_outputs(adapted, tmp_path / "work", _settings())
    config = TrainConfig(instance_data=str(tmp_path / "photos"), class_noun="dog",
                         output="s3://runs/rex/", subject_id="rex", job_id="rex-1")
    result = new_result(config, "f" * 64)
    weight_files.record(result.outputs, written, config.output)
    result.succeeded()
    record = result.to_json()
    jsonschema.validate(record, result_module.schema())
    assert record["schema_version"] == 2 and "model" not in record["outputs"]
    assert record["outputs"]["lora"] == ["s3://runs/rex/lora/pytorch_lora_weights.safetensors",
                                         "s3://runs/rex/lora/rex.safetensors"]
    assert [f["path"] for f in record["outputs"]["files"]] == written.lora
    assert json.loads(json.dumps(record)) == record
    assert result_module.output_locations(record) == {
        "model": None, "single_file": None, "lora": record["outputs"]["lora"]}


def test_export_single_file_in_a_lora_run_writes_the_merged_model_as_one_file(adapted, tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    expected_unet, expected_text = _unet_out(adapted.unet), _text_out(adapted.text_encoder)
    written = weight_files.write_outputs(adapted, tmp_path, _settings(precision="fp32", single_file=True))
    assert written.single_file == "rex.safetensors" and not written.model
    assert not (tmp_path / "model").exists()
    assert {f.path for f in written.files} == {"rex.safetensors", *written.lora}
    single = StableDiffusionPipeline.from_single_file(
        str(tmp_path / "rex.safetensors"), config=str(tiny_model), local_files_only=True,
        torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    torch.testing.assert_close(_unet_out(single.unet), expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_text_out(single.text_encoder), expected_text, rtol=1e-4, atol=1e-5)
    with safetensors_torch.safe_open(tmp_path / "rex.safetensors", framework="pt") as f:
        assert {k: f.metadata()[k] for k in METADATA} == METADATA
