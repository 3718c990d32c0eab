"""The base-model cache under <cache-dir>/models/ reuses a copy only when it verifies against a
fresh listing of the source and the digests recorded at download; a marker alone is not trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.training import base_models

WEIGHTS = bytes(range(256)) * 8
INDEX = b'{"_class_name": "StableDiffusionPipeline"}'


@pytest.fixture
def source(moto_bucket) -> str:
    prefix = f"s3://{moto_bucket}/models/base/"
    storage.write_bytes(storage.join(prefix, "model_index.json"), INDEX)
    storage.write_bytes(storage.join(prefix, "unet/diffusion_pytorch_model.safetensors"), WEIGHTS)
    return prefix


def weights(local: Path) -> bytes:
    return (local / "unet/diffusion_pytorch_model.safetensors").read_bytes()


def test_a_verified_copy_is_reused_without_downloading(source, tmp_path):
    first = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    inode = (first / "unet/diffusion_pytorch_model.safetensors").stat().st_ino
    second = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    assert second == first and weights(second) == WEIGHTS
    assert (second / "unet/diffusion_pytorch_model.safetensors").stat().st_ino == inode
    assert [p.name for p in first.parent.iterdir()] == [first.name], "no staging left behind"


def test_a_file_changed_in_the_cache_is_downloaded_again(source, tmp_path):
    local = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    poisoned = bytes(reversed(WEIGHTS))  # same size: only the digest tells
    (local / "unet/diffusion_pytorch_model.safetensors").write_bytes(poisoned)
    again = base_models.resolve_base_model(source, str(tmp_path))
    assert weights(Path(again.local_path)) == WEIGHTS


def test_a_file_planted_beside_the_copy_is_not_loaded(source, tmp_path):
    local = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    (local / "unet/diffusion_pytorch_model.bin").write_bytes(b"pickled attacker code")
    again = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    assert not (again / "unet/diffusion_pytorch_model.bin").exists()
    assert weights(again) == WEIGHTS


def test_a_bare_marker_is_not_trusted(source, tmp_path):
    """What a hostile key could leave before keys were checked: files plus the old marker."""
    local = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    shutil.rmtree(local)
    (local / "unet").mkdir(parents=True)
    (local / "model_index.json").write_bytes(INDEX)
    (local / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"attacker weights")
    (local / base_models.DOWNLOAD_MARKER).write_text(source)
    again = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    assert weights(again) == WEIGHTS
    assert json.loads((again / base_models.DOWNLOAD_MARKER).read_text())["source"] == source


def test_a_record_that_no_longer_matches_the_source_is_downloaded_again(source, tmp_path):
    local = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    record = json.loads((local / base_models.DOWNLOAD_MARKER).read_text())
    record["files"][1]["etag"] = "0" * 32
    (local / base_models.DOWNLOAD_MARKER).write_text(json.dumps(record))
    again = Path(base_models.resolve_base_model(source, str(tmp_path)).local_path)
    assert json.loads((again / base_models.DOWNLOAD_MARKER).read_text())["files"][1]["etag"] != "0" * 32


def test_an_unsafe_key_under_a_base_model_prefix_is_refused_before_any_write(source, moto_bucket, tmp_path):
    s3_client.s3_client().put_object(Bucket=moto_bucket, Key="models/base/unet/../../../../x.bin", Body=b"x")
    with pytest.raises(InvalidInputError, match=r"refusing s3://.*/models/base/unet/\.\./\.\./\.\./\.\./x\.bin"):
        base_models.resolve_base_model(source, str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    assert not list(tmp_path.rglob("x.bin"))


def test_a_cache_directory_replaced_by_a_symlink_is_not_followed(source, tmp_path):
    local = Path(base_models.resolve_base_model(source, str(tmp_path / "cache")).local_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(local, elsewhere)
    shutil.rmtree(local)
    local.symlink_to(elsewhere)  # a faithful copy, but not ours: whoever owns it can change it
    again = Path(base_models.resolve_base_model(source, str(tmp_path / "cache")).local_path)
    assert not again.is_symlink() and weights(again) == WEIGHTS
    assert elsewhere.is_dir(), "what the link pointed to is left alone"
