"""Fixtures for the deployment tests: the chart, loaded once, and its renders, cached per values
file for the session (Helm's engine is fast, but a few hundred renders add up)."""

from __future__ import annotations

import functools

import helm_python as helm
import pytest
import yaml
from deploy_support import CHART, NAMESPACE, RELEASE, Rendered


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> Rendered, cached by the values' content."""

    @functools.cache
    def cached(key: str) -> Rendered:
        values = yaml.safe_load(key)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return Rendered(manifests, chart.merge_values(values))

    return lambda values: cached(yaml.safe_dump(values, sort_keys=True))
