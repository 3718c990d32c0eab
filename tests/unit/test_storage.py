"""storage against the real S3 server and local directories: one interface for both."""

from __future__ import annotations

import os

import pytest

from dreambooth_job.exit_codes import RetryableError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client


@pytest.fixture(params=["s3", "local"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/prefix"


def test_write_list_read_delete(root):
    storage.write_bytes(storage.join(root, "a/b.txt"), b"hello")
    storage.write_bytes(storage.join(root, "c.png"), b"x" * 10)
    assert [(f.relative_path, f.size) for f in storage.list_files(root)] == [("a/b.txt", 5), ("c.png", 10)]
    assert [f.relative_path for f in storage.list_files(root, [".png"])] == ["c.png"]
    assert storage.read_bytes(storage.join(root, "a/b.txt")) == b"hello"
    assert storage.exists(storage.join(root, "c.png"))
    storage.delete(storage.join(root, "a") + "/")
    assert [f.relative_path for f in storage.list_files(root)] == ["c.png"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "a/b.txt"))


def test_upload_and_download_dirs_round_trip(root, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "one.bin").write_bytes(os.urandom(1000))
    (source / "two.bin").write_bytes(os.urandom(10))
    storage.upload_dir(source, root)
    copied = storage.download_dir(root, tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in copied) == ["sub/one.bin", "two.bin"]
    assert (tmp_path / "copy" / "sub" / "one.bin").read_bytes() == (source / "sub" / "one.bin").read_bytes()


def test_conditional_writes(root):
    uri = storage.join(root, "lease.json")
    etag = storage.write_conditional(uri, b"first")
    with pytest.raises(s3_client.PreconditionFailed):
        storage.write_conditional(uri, b"second")
    with pytest.raises(s3_client.PreconditionFailed):
        storage.write_conditional(uri, b"second", if_match="0" * 32)
    storage.write_conditional(uri, b"third", if_match=etag)
    assert storage.read_with_etag(uri)[0] == b"third"


def test_large_files_go_up_in_parts(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    storage.upload_file(big, f"s3://{bucket}/big.bin")
    [stored] = storage.list_files(f"s3://{bucket}/")
    assert stored.etag.endswith("-3"), "a multipart upload's ETag counts its parts"
    copy = storage.download_file(f"s3://{bucket}/big.bin", tmp_path / "copy.bin", stored)
    assert copy.read_bytes() == big.read_bytes()


def test_download_that_does_not_match_its_listing_is_rejected(bucket, tmp_path):
    storage.write_bytes(f"s3://{bucket}/photo.jpg", b"real bytes")
    [listed] = storage.list_files(f"s3://{bucket}/")
    # The object changed (grew) between the listing and the download.
    stale = storage.StoredFile(listed.relative_path, listed.size - 1, listed.etag)
    with pytest.raises(RetryableError, match="not the 9 expected"):
        storage.download_file(f"s3://{bucket}/photo.jpg", tmp_path / "p.jpg", stale)
    assert not (tmp_path / "p.jpg").exists()
