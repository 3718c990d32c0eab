"""Checkpoint cadence without a Trainer: steps, minutes (a fake clock), a stop request."""

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.training.checkpoint import CheckpointPolicy


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def due_steps(policy: CheckpointPolicy, steps, clock: FakeClock, seconds_per_step: float = 0.0):
    due = []
    for step in steps:
        clock.now += seconds_per_step
        if policy.due(step):
            policy.saved()
            due.append(step)
    return due


def test_every_n_steps_but_never_at_the_last_step():
    clock = FakeClock()
    policy = CheckpointPolicy(every_steps=3, last_step=9, clock=clock)
    assert due_steps(policy, range(1, 10), clock) == [3, 6]


def test_off_by_default():
    clock = FakeClock()
    policy = CheckpointPolicy(last_step=100, clock=clock)
    assert due_steps(policy, range(1, 101), clock, seconds_per_step=3600) == []


def test_every_m_minutes_counted_from_the_start_and_from_each_checkpoint():
    clock = FakeClock()
    policy = CheckpointPolicy(every_minutes=1, last_step=20, clock=clock)
    # 25 s a step: a minute has passed at steps 3 (75 s), then 6 (75 s after step 3), ...
    assert due_steps(policy, range(1, 21), clock, seconds_per_step=25) == [3, 6, 9, 12, 15, 18]


def test_minutes_and_steps_together():
    clock = FakeClock()
    policy = CheckpointPolicy(every_steps=5, every_minutes=2, last_step=12, clock=clock)
    # 50 s a step: two minutes passed at step 3; step 5 by count; then 2 min after step 5 is step 8.
    assert due_steps(policy, range(1, 13), clock, seconds_per_step=50) == [3, 5, 8, 10]


def test_a_stop_request_checkpoints_at_once_even_at_the_last_step():
    clock = FakeClock()
    policy = CheckpointPolicy(every_steps=100, last_step=7, clock=clock)
    assert not policy.due(7)
    assert policy.due(7, stop_requested=True)
    assert policy.due(2, stop_requested=True)


def test_from_config_reads_the_cadence_options():
    config = TrainConfig(instance_data="photos", class_noun="dog", output="out", max_train_steps=40,
                         checkpoint_every=10, checkpoint_interval_minutes=5)
    policy = CheckpointPolicy.from_config(config, clock=FakeClock())
    assert (policy.every_steps, policy.every_minutes, policy.last_step) == (10, 5, 40)
