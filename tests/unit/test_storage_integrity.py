"""Downloads verified by S3's checksums and sizes, in buckets whose ETags are not MD5s (SSE-KMS,
SSE-C): the `encrypted_s3` fixture puts tests/storage_proxy.py in front of the S3 server."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import zlib

import pytest

from dreambooth_job.exit_codes import ExitCode, RetryableError
from dreambooth_job.storage import checksums, s3_client
from dreambooth_job.storage import places as storage
from dreambooth_job.storage.lease import Lease
from dreambooth_job.training import base_models, prior_images

PART = 5 * 1024 * 1024  # S3's smallest part


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture(autouse=True)
def fresh_log_once(monkeypatch):
    monkeypatch.setattr(checksums, "_said", set())


@pytest.fixture
def multipart(monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", PART)


def size_only_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "by their size only" in r.getMessage()]


def test_the_proxy_answers_like_an_encrypted_bucket(bucket, encrypted_s3):
    storage.write_bytes(f"s3://{bucket}/a.txt", b"hello")
    [listed] = storage.list_files(f"s3://{bucket}/")
    head = s3_client.s3_client().head_object(Bucket=bucket, Key="a.txt")
    assert listed.etag != hashlib.md5(b"hello").hexdigest()
    assert head["ETag"].strip('"') == listed.etag


def test_photos_download_from_an_encrypted_bucket(bucket, encrypted_s3, photo_dir, tmp_path):
    storage.upload_dir(photo_dir, f"s3://{bucket}/photos/dog/")
    copies = storage.download_dir(f"s3://{bucket}/photos/dog/", tmp_path / "copy")
    assert sorted(p.name for p in copies) == sorted(p.name for p in photo_dir.iterdir())
    assert all(p.read_bytes() == (photo_dir / p.name).read_bytes() for p in copies)


def test_a_base_model_downloads_from_an_encrypted_bucket(bucket, encrypted_s3, tiny_model, tmp_path):
    storage.upload_dir(tiny_model, f"s3://{bucket}/models/tiny/")
    model = base_models.resolve_base_model(f"s3://{bucket}/models/tiny/", str(tmp_path / "cache"))
    for original in (p for p in tiny_model.rglob("*") if p.is_file()):
        copy = tmp_path / "cache" / "models" / model.fingerprint[:16] / original.relative_to(tiny_model)
        assert copy.read_bytes() == original.read_bytes()


def test_ranged_downloads_are_verified_by_their_composite_checksum(
        bucket, encrypted_s3, multipart, tmp_path):
    data = os.urandom(2 * PART + 1000)
    (tmp_path / "big.bin").write_bytes(data)
    storage.upload_file(tmp_path / "big.bin", f"s3://{bucket}/big.bin")
    copy = storage.download_file(f"s3://{bucket}/big.bin", tmp_path / "copy.bin")
    assert copy.read_bytes() == data
    ranged = [r for r in encrypted_s3.requests if r.method == "GET" and "Range" in r.headers]
    assert len(ranged) == 3, "the transfer manager fetched the parts with ranged GETs"

    encrypted_s3.corrupt(lambda r: r.headers.get("Range", "").startswith(f"bytes={PART}-"))
    with pytest.raises(RetryableError, match="does not match its CRC32 checksum") as failure:
        storage.download_file(f"s3://{bucket}/big.bin", tmp_path / "corrupt.bin")
    assert failure.value.exit_code == ExitCode.RETRYABLE
    assert not (tmp_path / "corrupt.bin").exists()


def test_a_whole_object_get_that_does_not_match_is_rejected(bucket, encrypted_s3, tmp_path):
    storage.write_bytes(f"s3://{bucket}/photo.jpg", b"real bytes")
    encrypted_s3.corrupt(lambda r: r.method == "GET" and r.path.endswith("/photo.jpg"))
    with pytest.raises(RetryableError, match=r"photo.jpg does not match its (CRC32 )?checksum"):
        storage.download_file(f"s3://{bucket}/photo.jpg", tmp_path / "p.jpg")
    assert not (tmp_path / "p.jpg").exists()


def test_objects_without_a_checksum_are_verified_by_size_and_the_log_says_so_once(
        bucket, encrypted_s3, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")  # an old uploader
    s3_client.reset_client()
    for name in ("a.jpg", "b.jpg"):
        storage.write_bytes(f"s3://{bucket}/photos/{name}", name.encode() * 100)
    head = s3_client.s3_client().head_object(Bucket=bucket, Key="photos/a.jpg", ChecksumMode="ENABLED")
    assert checksums.from_head(head) is None
    with caplog.at_level(logging.WARNING):
        copies = storage.download_dir(f"s3://{bucket}/photos/", tmp_path / "copy")
    assert [p.read_bytes() for p in copies] == [b"a.jpg" * 100, b"b.jpg" * 100]
    [warning] = size_only_warnings(caplog)
    assert "has no S3 checksum" in warning


def test_composite_checksums_fall_back_to_size_when_parts_are_not_listed(
        bucket, encrypted_s3, multipart, tmp_path, caplog):
    data = os.urandom(PART + 10)
    (tmp_path / "big.bin").write_bytes(data)
    storage.upload_file(tmp_path / "big.bin", f"s3://{bucket}/big.bin")
    # An IAM policy without s3:GetObjectAttributes.
    encrypted_s3.fail(2, "AccessDenied", 403, matches=lambda r: "attributes" in r.query)
    with caplog.at_level(logging.WARNING):
        for name in ("one.bin", "two.bin"):
            assert storage.download_file(f"s3://{bucket}/big.bin", tmp_path / name).read_bytes() == data
    [warning] = size_only_warnings(caplog)
    assert "cannot verify the composite checksum" in warning


def test_uploads_carry_a_crc32_checksum(bucket, multipart, tmp_path):
    storage.write_bytes(f"s3://{bucket}/small.bin", b"small")
    data = os.urandom(PART + 10)
    (tmp_path / "big.bin").write_bytes(data)
    storage.upload_file(tmp_path / "big.bin", f"s3://{bucket}/big.bin")
    small, big = (s3_client.s3_client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
                  for key in ("small.bin", "big.bin"))
    assert checksums.from_head(small) == checksums.StoredChecksum("CRC32", crc32(b"small"))
    assert checksums.from_head(big).parts == 2, "a multipart upload has a composite checksum"
    assert checksums.compute(tmp_path / "big.bin", "CRC32", [PART, 10]) == checksums.from_head(big).value


def test_conditional_writes_and_the_lease_work_in_an_encrypted_bucket(bucket, encrypted_s3):
    uri = f"s3://{bucket}/run/lease.json"
    etag = storage.write_conditional(uri, b"first")
    assert etag != hashlib.md5(b"first").hexdigest()
    with pytest.raises(s3_client.PreconditionFailed):
        storage.write_conditional(uri, b"second", if_match=hashlib.md5(b"first").hexdigest())
    replaced = storage.write_conditional(uri, b"third", if_match=etag)
    assert storage.read_with_etag(uri) == (b"third", replaced)

    holder, rival = Lease(f"s3://{bucket}/out", 60), Lease(f"s3://{bucket}/out", 60)
    holder.acquire()
    with pytest.raises(RetryableError, match="holds the lease"):
        rival.acquire()
    holder.renew(force=True)
    holder.release()
    rival.acquire()
    assert rival.held and not holder.held


def test_base_model_fingerprints_and_class_cache_keys_stay_what_they_were(bucket, tmp_path):
    """Keys of existing caches: computed by the code before downloads were verified by checksum
    (the listing's ETags, sizes and paths are hashed), so existing class-image caches and
    downloaded base models stay in use."""
    storage.write_bytes(f"s3://{bucket}/m/model_index.json", b'{"_class_name": "StableDiffusionPipeline"}')
    storage.write_bytes(f"s3://{bucket}/m/unet/diffusion_pytorch_model.safetensors", b"weights" * 100)
    model = base_models.resolve_base_model(f"s3://{bucket}/m", str(tmp_path / "cache"))
    assert model.fingerprint == "cde0e72b0ee342f4f75da2c9d07c9b95c0d93ffc4d88d52b5e667353ba376212"
    key = prior_images.cache_key(model_fingerprint=model.fingerprint, class_prompt="a dog", resolution=512,
                                 sampler="DPMSolverMultistepScheduler", steps=25, guidance_scale=7.5, seed=0)
    assert key == "dab21d67ef08d348f95b1018"
