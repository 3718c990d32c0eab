"""One torch thread in these tests: on a shared 2-core machine, OpenMP threads waiting on each
other made a tiny step several times slower than one thread (docs/benchmarks.md)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
