"""Fixtures of the metrics tests: a real Pushgateway (one per session) and real Prometheus servers,
installed through scripts/install-system-deps.sh when missing and started on loopback ports.
"""

from __future__ import annotations

import pytest
from metrics_support import Prometheus, Pushgateway, ensure_binary

from dreambooth_job.config.train_config import TrainConfig


@pytest.fixture(scope="session")
def pushgateway():
    binary = ensure_binary("prometheus-pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is missing and scripts/install-system-deps.sh could not "
                    "install it (Debian package prometheus-pushgateway)")
    server = Pushgateway(binary)
    yield server
    server.stop()


@pytest.fixture
def start_prometheus():
    """`start_prometheus(targets)` -> a Prometheus scraping `targets` ("host:port") every second."""
    binary = ensure_binary("prometheus")
    if binary is None:
        pytest.skip("the Debian package prometheus could not be installed "
                    "(scripts/install-system-deps.sh failed): no real Prometheus to scrape with")
    servers: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        servers.append(Prometheus(binary, targets))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_config():
    """A TrainConfig for an observer: no metrics server unless asked, unique-enough ids."""

    def make(**overrides) -> TrainConfig:
        values = {"metrics_port": 0, "job_id": "dog-0001", "subject_id": "dog", "batch_id": "nightly"}
        return TrainConfig(**{**values, **overrides})

    return make
