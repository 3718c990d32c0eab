"""A Pushgateway behind basic auth (its own --web.config.file): credentials come from the
environment (a Secret in the pod), never from the URL, which refuses them."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path

import pytest
from metrics_support import ServerProcess, ensure_binary, free_port, http_get, samples_by_name, value

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.metrics import (
    PUSH_JOB,
    PUSH_PASSWORD_ENV,
    PUSH_USERNAME_ENV,
    PrometheusObserver,
    delete_batch_groups,
    pushed_groups,
)

with warnings.catch_warnings():  # libxcrypt's bcrypt, which the gateway's web config wants
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

USER, PASSWORD = "pusher", "s3cret-push-pw"


class AuthPushgateway(ServerProcess):
    def __init__(self, binary: str, workdir: Path):
        port = free_port()
        web_config = workdir / "web.yml"
        hashed = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))
        web_config.write_text(json.dumps({"basic_auth_users": {USER: hashed}}))
        super().__init__([binary, f"--web.listen-address=127.0.0.1:{port}",
                          f"--web.config.file={web_config}"], port, "/-/ready")

    def _ready(self, path: str) -> bool:  # every path asks for the password, readiness too
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with {self.process.returncode}: {self.log_tail()}")
        return http_get(self.url + path, timeout=1)[0] == 401


@pytest.fixture
def auth_pushgateway(tmp_path):
    binary = ensure_binary("prometheus-pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is missing (Debian package prometheus-pushgateway)")
    server = AuthPushgateway(binary, tmp_path)
    yield server
    server.stop()


def push_once(url: str, batch: str) -> PrometheusObserver:
    observer = PrometheusObserver(TrainConfig(metrics_port=0, pushgateway=url, batch_id=batch,
                                              subject_id="dog"), push_timeout=2)
    with observer:
        observer.phase_started("download")
        observer.finished(exit_code=0)
    return observer


def test_credentials_from_the_environment_reach_a_protected_gateway(auth_pushgateway, monkeypatch):
    batch = "batch-" + uuid.uuid4().hex[:8]
    monkeypatch.delenv(PUSH_USERNAME_ENV, raising=False)
    monkeypatch.delenv(PUSH_PASSWORD_ENV, raising=False)
    refused = push_once(auth_pushgateway.url, batch)
    assert value(samples_by_name(refused.exposition().decode()),
                 "dreambooth_pushgateway_failures_total") >= 1

    monkeypatch.setenv(PUSH_USERNAME_ENV, USER)
    monkeypatch.setenv(PUSH_PASSWORD_ENV, PASSWORD)
    accepted = push_once(auth_pushgateway.url, batch)
    assert value(samples_by_name(accepted.exposition().decode()),
                 "dreambooth_pushgateway_failures_total") == 0
    assert [g["subject_id"] for g in pushed_groups(auth_pushgateway.url, batch)] == ["dog"]
    assert all(g["job"] == PUSH_JOB for g in pushed_groups(auth_pushgateway.url, batch))
    assert delete_batch_groups(auth_pushgateway.url, batch) == []
    assert pushed_groups(auth_pushgateway.url, batch) == []


def test_a_gateway_url_with_credentials_is_refused():
    with pytest.raises(InvalidInputError, match="--pushgateway") as error:
        TrainConfig(pushgateway=f"http://{USER}:{PASSWORD}@127.0.0.1:9091")
    assert PASSWORD not in str(error.value)
