"""One torch thread in these tests: on a shared 2-core machine, OpenMP threads waiting on each
other made a tiny step several times slower than one thread (docs/benchmarks.md)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread_here(one_torch_thread):
    """Every bench test module gets tests/conftest.py's one_torch_thread."""
