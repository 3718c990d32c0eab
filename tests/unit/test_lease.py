import pytest

from dreambooth_job.exit_codes import RetryableError
from dreambooth_job.lease import Lease


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["s3", "local"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"s3://{request.getfixturevalue('bucket')}/run"


def test_a_second_holder_is_refused_while_the_lease_lives(output):
    clock = Clock()
    first, second = Lease(output, 60, clock), Lease(output, 60, clock)
    first.acquire()
    with pytest.raises(RetryableError, match="holds the lease"):
        second.acquire()
    first.release()
    second.acquire()
    assert second.held


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops(output):
    clock = Clock()
    stale, fresh = Lease(output, 60, clock), Lease(output, 60, clock)
    stale.acquire()
    clock.now += 61
    fresh.acquire()
    with pytest.raises(RetryableError, match="lost the lease"):
        stale.renew(force=True)
    fresh.renew(force=True)
    assert fresh.held and not stale.held
