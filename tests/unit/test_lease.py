import json

import pytest
from storage_proxy import S3TestProxy

from dreambooth_job.config.operator_policy import ALLOW_UNCONDITIONAL_STORE_ENV, OperatorPolicy
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError, RetryableError
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.storage.lease import LEASE_FILE, Lease, check_conditional_writes, holding


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


class Sleeps:
    """An injected sleep: advances the fake clock, records the waits, and may act on the n-th."""

    def __init__(self, clock, on_call=None):
        self.clock, self.on_call, self.waits = clock, on_call, []

    def __call__(self, seconds):
        self.waits.append(seconds)
        self.clock.now += seconds
        if self.on_call:
            self.on_call(len(self.waits))


def never_sleeps(seconds):
    raise AssertionError(f"slept {seconds}s where the lease should be taken at once")


def test_a_retry_of_the_same_job_takes_over_its_killed_pods_lease_at_once(output):
    clock = Clock()
    killed = Lease(output, 600, clock, job_uid="uid-1")
    killed.acquire()  # ... and the pod is OOMKilled: no release
    retry = Lease(output, 600, clock, job_uid="uid-1", wait_seconds=0, sleep=never_sleeps)
    retry.acquire()
    assert retry.held
    holder = json.loads(storage.read_bytes(retry.uri))
    assert holder["holder"] == retry.holder and holder["job_uid"] == "uid-1"
    with pytest.raises(RetryableError, match="lost the lease"):
        killed.renew(force=True)


def test_another_index_or_job_or_a_pod_without_job_is_not_taken_over(output):
    clock = Clock()
    holder = Lease(output, 600, clock, job_uid="uid-1", completion_index="0")
    holder.acquire()
    for other in ({"job_uid": "uid-1", "completion_index": "1"}, {"job_uid": "uid-2"},
                  {"job_uid": None, "completion_index": "0"}):
        with pytest.raises(RetryableError, match="holds the lease"):
            Lease(output, 600, clock, **other).acquire()
    holder.renew(force=True)
    assert holder.held
    same_index = Lease(output, 600, clock, job_uid="uid-1", completion_index="0", sleep=never_sleeps)
    same_index.acquire()
    assert same_index.held


def test_another_jobs_lease_is_waited_for_until_it_is_released(output):
    clock = Clock()
    other = Lease(output, 600, clock, job_uid="uid-other")
    other.acquire()
    sleeps = Sleeps(clock, on_call=lambda n: n == 3 and other.release())
    waiting = Lease(output, 600, clock, job_uid="uid-1", wait_seconds=300, sleep=sleeps)
    waiting.acquire()
    assert waiting.held and len(sleeps.waits) == 3
    assert sum(sleeps.waits) < 300


def test_a_dead_jobs_lease_is_taken_over_once_it_expires_within_the_wait(output):
    clock = Clock()
    Lease(output, 60, clock, job_uid="uid-dead").acquire()
    sleeps = Sleeps(clock)
    waiting = Lease(output, 60, clock, job_uid="uid-1", wait_seconds=300, sleep=sleeps)
    waiting.acquire()
    assert waiting.held
    assert 60 <= sum(sleeps.waits) < 300, "not before the expiry, not the whole wait"


def test_the_wait_for_another_job_is_bounded_then_retryable(output):
    clock = Clock()
    Lease(output, 600, clock, job_uid="uid-other").acquire()
    sleeps = Sleeps(clock)
    waiting = Lease(output, 600, clock, job_uid="uid-1", wait_seconds=100, sleep=sleeps)
    with pytest.raises(RetryableError, match=r"holds the lease .* \(waited 100s\)"):
        waiting.acquire()
    assert sum(sleeps.waits) == pytest.approx(100) and not waiting.held


class Beats:
    """The heartbeat's wait, driven by the test: each beat moves the fake clock by the interval;
    the heartbeat stops after `count` beats (stop_heartbeat joins it: no real time passes)."""

    def __init__(self, clock, count, before=None):
        self.clock, self.count, self.before, self.done = clock, count, before, 0

    def run(self, lease):
        lease.start_heartbeat(self)
        lease.stop_heartbeat()

    def __call__(self, seconds):
        if self.done == self.count:
            return True
        self.done += 1
        self.clock.now += seconds
        if self.before:
            self.before(self.done)
        return False


def test_the_heartbeat_keeps_the_lease_through_a_phase_longer_than_the_ttl(output):
    clock = Clock()
    lease = Lease(output, 60, clock, job_uid="uid-1")
    lease.acquire()
    Beats(clock, count=9).run(lease)  # 9 beats of 20 s: three TTLs, and no phase end
    assert clock.now - 1000.0 == pytest.approx(180)
    with pytest.raises(RetryableError, match="holds the lease"):
        Lease(output, 60, clock, job_uid="uid-2").acquire()
    lease.renew()
    assert lease.held


def test_a_lease_the_heartbeat_lost_stops_the_job_at_its_next_check(output):
    clock = Clock()
    lease = Lease(output, 60, clock, job_uid="uid-1")
    lease.acquire()
    thief = Lease(output, 60, clock, job_uid="uid-2")

    def steal(beat):
        if beat == 2:  # the holder stalled past its TTL; another run took the lease over
            clock.now += 61
            thief.acquire()

    Beats(clock, count=5, before=steal).run(lease)
    assert not lease.held
    with pytest.raises(RetryableError, match="lost the lease"):
        lease.renew()  # the cheap check at every step and phase end
    thief.renew(force=True)
    assert thief.held


@pytest.fixture
def store_ignoring_if_none_match(bucket, s3_server, monkeypatch):
    """The real S3 server behind a proxy that drops If-None-Match, like a store that ignores it."""
    with S3TestProxy(s3_server.endpoint, strip_headers={"if-none-match"}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3_client.reset_client()
        yield f"s3://{bucket}/run/"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    s3_client.reset_client()


def test_a_store_that_enforces_conditional_writes_passes_the_probe(output):
    check_conditional_writes(output, OperatorPolicy())
    assert not storage.list_files(output), "the probe leaves nothing behind"


def test_a_store_that_ignores_conditional_writes_is_refused(store_ignoring_if_none_match):
    output = store_ignoring_if_none_match
    with pytest.raises(InvalidInputError, match="does not enforce conditional writes") as refused:
        check_conditional_writes(output, OperatorPolicy())
    assert ALLOW_UNCONDITIONAL_STORE_ENV in refused.value.message
    assert "\n" not in refused.value.message
    assert not storage.list_files(output), "the probe leaves nothing behind"
    check_conditional_writes(output, OperatorPolicy(allow_store_without_conditional_writes=True))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 86401.0])
def test_the_lease_wait_is_a_bounded_number_of_seconds(bad):
    # nan and inf are caught by the finite-number check that runs first, the rest by the bounds.
    bounded = "--lease-wait-seconds must be (between 0 and 86400|a finite)"
    with pytest.raises(InvalidInputError, match=bounded):
        TrainConfig(lease_wait_seconds=bad)


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[1, 2]", b'{"expires_at": "never"}',
                                     b'{"expires_at": 1e999}', b'{"expires_at": true}'])
def test_a_lease_object_that_is_no_record_is_taken_over(output, garbage):
    storage.write_bytes(storage.join(output, LEASE_FILE), garbage)
    lease = Lease(output, 600, Clock(), sleep=never_sleeps)
    lease.acquire()
    assert lease.held


def test_holding_keeps_the_lease_for_a_block_and_releases_it_after_an_error(output):
    clock = Clock()
    lease = Lease(output, 60, clock)
    with pytest.raises(RuntimeError), holding(lease):
        assert lease.held and storage.exists(storage.join(output, LEASE_FILE))
        with pytest.raises(RetryableError, match="holds the lease"):
            Lease(output, 60, clock).acquire()
        raise RuntimeError("a phase failed")
    assert not lease.held and not storage.exists(storage.join(output, LEASE_FILE))
    Lease(output, 60, clock).acquire()  # free for the next run
