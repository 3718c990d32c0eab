"""Object keys are strings, not paths: a listed key becomes a local path only when it stays inside
the target directory, and a download GETs exactly the key that was listed.

moto's S3 server keeps keys verbatim (`a//b`, `../x`), as AWS S3 does; SeaweedFS normalizes some.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import object_keys, s3_client
from dreambooth_job.storage import places as storage
from dreambooth_job.training.checkpoint import CheckpointStore


def put(bucket: str, key: str, data: bytes = b"data") -> None:
    s3_client.s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("rel", ["../../escaped.bin", "./here.bin", "a/../../escaped.bin", "a\\b.bin", ".."])
def test_download_dir_refuses_a_key_that_is_not_a_plain_relative_path(moto_bucket, tmp_path, rel):
    put(moto_bucket, "subjects/dog/ok.jpg")
    put(moto_bucket, f"subjects/dog/{rel}", b"hostile")
    target = tmp_path / "work" / "photos"
    with pytest.raises(object_keys.UnsafeKeyError, match="refusing s3://.*/subjects/dog/") as caught:
        storage.download_dir(f"s3://{moto_bucket}/subjects/dog/", target)
    assert rel.replace("\\", "\\\\") in str(caught.value) or rel in str(caught.value)
    assert "\n" not in str(caught.value)
    assert files_under(tmp_path) == [], "nothing is written, inside the target or outside it"


def test_a_double_slash_key_is_not_turned_into_an_absolute_path(moto_bucket, tmp_path):
    planted = tmp_path / "elsewhere" / "weights.bin"
    put(moto_bucket, f"subjects/dog/{planted}", b"hostile")  # subjects/dog//tmp/.../weights.bin
    with pytest.raises(object_keys.UnsafeKeyError, match="absolute"):
        storage.download_dir(f"s3://{moto_bucket}/subjects/dog/", tmp_path / "photos")
    assert not planted.exists()


def test_skipped_keys_are_reported_and_the_rest_downloaded(moto_bucket, tmp_path):
    put(moto_bucket, "subjects/dog/ok.jpg", b"good")
    put(moto_bucket, "subjects/dog/../../x.jpg", b"hostile")
    put(moto_bucket, "subjects/dog//ok.jpg", b"another key that joins onto ok.jpg")
    skipped = []
    copied = storage.download_dir(f"s3://{moto_bucket}/subjects/dog/", tmp_path / "photos",
                                  on_unsafe_key=lambda file, reason: skipped.append(file.relative_path))
    assert sorted(skipped) == ["../../x.jpg", "/ok.jpg"]
    assert copied == [tmp_path / "photos" / "ok.jpg"]
    assert (tmp_path / "photos" / "ok.jpg").read_bytes() == b"good"
    assert files_under(tmp_path) == ["photos/ok.jpg"]


def test_a_key_that_is_also_a_folder_is_named_not_an_os_error(moto_bucket, tmp_path):
    put(moto_bucket, "subjects/dog/x.jpg")
    put(moto_bucket, "subjects/dog/x.jpg/y.jpg")
    with pytest.raises(object_keys.UnsafeKeyError, match=r"x\.jpg: it is also the folder of other keys"):
        storage.download_dir(f"s3://{moto_bucket}/subjects/dog/", tmp_path / "photos")
    assert files_under(tmp_path) == []


def test_deleting_a_prefix_deletes_exactly_the_listed_keys(moto_bucket):
    for key in ("out/a//b.bin", "out/a/b.bin.keep", "out/c.bin"):
        put(moto_bucket, key)
    put(moto_bucket, "keep/a/b.bin")
    storage.delete(f"s3://{moto_bucket}/out/")
    left = [o["Key"] for o in s3_client.s3_client().list_objects_v2(Bucket=moto_bucket).get("Contents", [])]
    assert left == ["keep/a/b.bin"]


def test_a_local_directory_does_not_follow_symlinks_that_leave_it(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("credentials")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "real.jpg").write_bytes(b"photo")
    (photos / "alias.jpg").symlink_to(photos / "real.jpg")  # inside: fine
    (photos / "evil.jpg").symlink_to(secret)
    with pytest.raises(object_keys.UnsafeKeyError, match="evil.jpg: it is a symlink that leaves"):
        storage.download_dir(str(photos), tmp_path / "copy")
    skipped = []
    storage.download_dir(str(photos), tmp_path / "copy",
                         on_unsafe_key=lambda file, reason: skipped.append(file.relative_path))
    assert skipped == ["evil.jpg"]
    assert files_under(tmp_path / "copy") == ["alias.jpg", "real.jpg"]


@pytest.mark.parametrize("rel", ["a\x00b", "a\nb.jpg", "a\\b", "/a", "a//b", "a/./b", "a/..", ""])
def test_unsafe_key_shapes(rel):
    assert object_keys.unsafe_reason(rel) is not None
    assert "\n" not in object_keys.display_key(rel)


@pytest.mark.parametrize("rel", ["a.jpg", "sub/a b.jpg", "ünïcode/狗.png", "..a/b..", ".hidden"])
def test_plain_relative_keys_are_safe(rel):
    assert object_keys.unsafe_reason(rel) is None


# ----------------------------------------------------------------------------------------------
# Checkpoint manifests name paths too: every one is checked before anything is written.

def planted_checkpoint(output: Path, path: str, data: bytes) -> CheckpointStore:
    step = output / "checkpoints" / "step-000010"
    (step / path).parent.mkdir(parents=True, exist_ok=True)
    (step / path).write_bytes(data)  # so that the copy itself would succeed
    (step / "manifest.json").write_text(json.dumps({"step": 10, "identifier": "sks", "config": {}, "files": [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}))
    return CheckpointStore(str(output), keep=2)


@pytest.mark.parametrize("path", ["../../../escaped.bin", "a//b.bin", "/abs.bin"])
def test_a_checkpoint_manifest_path_that_leaves_its_directory_exits_2(tmp_path, path):
    store = planted_checkpoint(tmp_path / "out", path.lstrip("/"), b"weights")
    manifest = json.loads((tmp_path / "out/checkpoints/step-000010/manifest.json").read_text())
    manifest["files"][0]["path"] = path
    (tmp_path / "out/checkpoints/step-000010/manifest.json").write_text(json.dumps(manifest))
    resume = tmp_path / "work" / "a" / "b" / "resume"
    with pytest.raises(InvalidInputError, match=r"manifest\.json names the path '[^']*'") as caught:
        store.fetch_newest_valid(resume)
    assert path.replace("//", "/") in str(caught.value).replace("//", "/")
    assert not (tmp_path / "work").exists(), "nothing written before the check"


def test_a_malformed_checkpoint_manifest_exits_2(tmp_path):
    store = planted_checkpoint(tmp_path / "out", "model.bin", b"weights")
    manifest_file = tmp_path / "out/checkpoints/step-000010/manifest.json"
    manifest_file.write_text(json.dumps({"step": 10, "files": [{"path": ["x"], "size": 1}]}))
    with pytest.raises(InvalidInputError, match="malformed"):
        store.fetch_newest_valid(tmp_path / "resume")


def test_a_valid_checkpoint_still_fetches(tmp_path):
    store = planted_checkpoint(tmp_path / "out", "sub/model.bin", os.urandom(64))
    assert store.fetch_newest_valid(tmp_path / "resume").step == 10
    assert files_under(tmp_path / "resume") == ["sub/model.bin"]
